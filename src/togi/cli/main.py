"""The ``togi`` entry point."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import click
import typer
from rich.text import Text
from typer.core import TyperGroup

from togi.cli import data, render
from togi.cli.chat import chat_command
from togi.cli.common import EXIT_FINDINGS, EXIT_USAGE, errors, fail
from togi.cli.data_generation import augment_command, prefs_command
from togi.cli.evaluate import eval_app
from togi.cli.export import export_command
from togi.cli.predict import predict_command
from togi.cli.serve import jobs_app, serve_app
from togi.cli.terminal import echo, styled
from togi.cli.train import train_command
from togi.cli.estimate import estimate_command
from togi.cli.tune import tune_command
from togi.version import __version__
from togi.config import ConfigError
from togi.errors import TogiError

BUG_NOTE = "togi: this is a bug in togi, not a problem with your input; please report it with the traceback below"


def render_config_error(error: ConfigError) -> typer.Exit:
    """Every problem of a recipe (or a search space), each at its field and line with its own hint."""
    errors.print(Text(f"togi: the {error.what} has {len(error.issues)} problem(s) ({error.source}):", style="bold red"), soft_wrap=True)
    for issue in error.issues:
        where = f"{error.source}:{issue.line} " if issue.line else ""
        errors.print(Text(f"  {where}{issue.path}: {issue.message}", style="red"), soft_wrap=True)
        errors.print(Text(f"      hint: {issue.hint}", style="dim"), soft_wrap=True)
    return typer.Exit(EXIT_USAGE)


def report(error: TogiError) -> typer.Exit:
    """The data's findings, then the message and its hint; exit 1 when the data or the run failed, 2 otherwise. Of a
    run's several processes, the main one reports in full and the others in one line each (the same inputs mostly
    fail them all alike)."""
    from togi.train.distributed import Processes

    processes = Processes.current()
    if not processes.main:
        errors.print(Text(f"togi (rank {processes.rank}): {error.message}", style="red"), soft_wrap=True)
        return typer.Exit(EXIT_FINDINGS if error.work_failed else EXIT_USAGE)
    if isinstance(error, ConfigError):
        return render_config_error(error)
    if error.findings:
        render.render_findings(errors, list(error.findings))
    return fail(error.message, error.hint, EXIT_FINDINGS if error.work_failed else EXIT_USAGE)


class TogiGroup(TyperGroup):
    """The root command, and the one place where the CLI catches togi's errors: a ``TogiError`` from any command
    is reported with its hint and no traceback; anything else is a bug in togi, and is shown as one."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TogiError as error:
            raise report(error) from None
        except (click.exceptions.Exit, typer.Exit, click.ClickException, click.exceptions.Abort, typer.Abort, EOFError):
            raise  # click's and typer's own ways out (typer's are not click's): an exit code, a usage error, Ctrl-C, end of input
        except Exception:
            errors.print(styled((BUG_NOTE, "bold red")), soft_wrap=True)
            raise


app = typer.Typer(
    name="togi",
    help="togi (研ぎ): sharpen a pretrained language model for one task on your own data.",
    cls=TogiGroup,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data.app.command("prefs")(prefs_command)
data.app.command("augment")(augment_command)
app.add_typer(data.app, name="data")
app.command("train")(train_command)
app.command("tune")(tune_command)
app.command("estimate")(estimate_command)
app.add_typer(eval_app, name="eval")
app.command("export")(export_command)
app.command("chat")(chat_command)
app.command("predict")(predict_command)
app.add_typer(serve_app, name="serve")
app.add_typer(jobs_app, name="jobs")


def _print_version(value: bool) -> None:
    if value:
        echo(f"togi {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_print_version, is_eager=True, help="Show the version and exit.")] = None,
) -> None:
    """togi (研ぎ): sharpen a pretrained language model for one task on your own data."""


if __name__ == "__main__":
    app()
