"""What every togi command shares: the error console, ``fail`` (one line with a hint, then an exit code) and
``quiet_libraries``. The library's own errors (``togi.errors.TogiError``) are reported in one place, the root
command in ``togi.cli.main``."""

from __future__ import annotations

import warnings

import typer

from togi.cli.terminal import make_console, styled

errors = make_console(stderr=True)

EXIT_FINDINGS = 1
EXIT_USAGE = 2


def fail(message: str, hint: str, code: int = EXIT_USAGE) -> typer.Exit:
    """A problem the user can fix, as one line with its hint on stderr; raise what it returns to exit with ``code``.
    Commands call it for problems with their own arguments; every ``TogiError`` the library raises comes here
    through ``togi.cli.main``."""
    errors.print(styled((f"togi: {message}", "bold red"), *(("  ", (f"(hint: {hint})", "dim")) if hint else ())), soft_wrap=True)
    return typer.Exit(code)


def quiet_libraries() -> None:
    """Keep library chatter (progress bars, deprecation warnings) out of togi's own output."""
    import os

    from transformers.utils import logging as hf_logging

    os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm bars that transformers does not route through its own switch
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
