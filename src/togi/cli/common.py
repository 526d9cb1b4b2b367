"""What every togi command shares: the error console, ``fail`` (one line with a hint, then an exit code),
``user_errors`` (problems the user can fix, without a traceback) and ``quiet_libraries``."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

import typer

from togi.cli.terminal import make_console, styled
from togi.data.augment import AugmentError
from togi.data.labels import LabelPatternError
from togi.data.reader import DataFileError
from togi.data.split import SplitError
from togi.data.template import ChatTemplateError
from togi.data.writer import NotConvertible
from togi.models.resolve import ModelNotFound

errors = make_console(stderr=True)

EXIT_FINDINGS = 1
EXIT_USAGE = 2


def fail(message: str, hint: str, code: int = EXIT_USAGE) -> typer.Exit:
    errors.print(styled((f"togi: {message}", "bold red"), "  ", (f"(hint: {hint})", "dim")), soft_wrap=True)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Problems the user can fix become one line with a hint, and exit code 2; never a traceback."""
    try:
        yield
    except DataFileError as error:
        raise fail(f"{error.path}: {error.message}", error.hint) from None
    except ModelNotFound as error:
        raise fail(error.message, error.hint) from None
    except (LabelPatternError, SplitError, NotConvertible, ChatTemplateError, AugmentError) as error:
        raise fail(str(error), "see `togi data --help`") from None


def quiet_libraries() -> None:
    """Keep library chatter (progress bars, deprecation warnings) out of togi's own output."""
    import os

    from transformers.utils import logging as hf_logging

    os.environ.setdefault("TQDM_DISABLE", "1")  # tqdm bars that transformers does not route through its own switch
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
