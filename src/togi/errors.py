"""The one base of every error togi raises at its users.

A ``TogiError`` is a problem the user can fix: ``message`` says what is wrong and where (a file and
line, a recipe field, a run directory), ``hint`` says what to do about it. ``str(error)`` is the
message, so it reads the same in a traceback, a log line or an HTTP error body as on the command line.

Each front end catches ``TogiError`` in one place (the CLI: ``togi.cli.main``) and shows message and
hint; any other exception escaping togi is a bug in togi, and is shown as one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence


class TogiError(Exception):
    """A problem the user can fix: what is wrong and where (``message``), and what to do (``hint``)."""

    #: The hint every instance of a class shares, where the remedy does not depend on the case.
    hint: str = ""
    #: False for a request that cannot be carried out as given (a missing file, a bad recipe, an unknown option);
    #: True when the work was tried and failed on the data or in the run (bad examples, a diverged loss). The CLI
    #: exits 2 for the first, 1 for the second, as ``togi data check`` exits 1 on findings.
    work_failed: ClassVar[bool] = False
    #: The problems found in the user's data, each a ``togi.data.findings.Finding`` with its file and line, for a
    #: front end to list before the message; empty for most errors.
    findings: Sequence[Any] = ()

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        return self.message
