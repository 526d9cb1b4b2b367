"""The ``togi`` entry point."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from togi.cli import data
from togi.cli.chat import chat_command
from togi.cli.data_generation import augment_command, prefs_command
from togi.cli.evaluate import eval_app
from togi.cli.export import export_command
from togi.cli.predict import predict_command
from togi.cli.serve import jobs_app, serve_app
from togi.cli.terminal import echo
from togi.cli.train import train_command
from togi.version import __version__

app = typer.Typer(
    name="togi",
    help="togi (研ぎ): sharpen a pretrained language model for one task on your own data.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data.app.command("prefs")(prefs_command)
data.app.command("augment")(augment_command)
app.add_typer(data.app, name="data")
app.command("train")(train_command)
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
