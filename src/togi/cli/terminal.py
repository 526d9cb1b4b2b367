"""The one place where togi's command line hands text to the terminal.

Text from data files, paths, models and users is printed literally: rich markup (``[llama]``,
``[/INST]``, ``[/]``) and emoji codes are off on every console, so styling is given with
``rich.text.Text`` objects, never inside strings. Text that cannot be encoded for the terminal (a lone
surrogate from a ``\\ud800`` escape in a JSON file, or the undecodable bytes of a file name) is shown as
a backslash escape instead of raising ``UnicodeEncodeError``, so stdout stays valid UTF-8.

Every console of the CLI comes from :func:`make_console`; plain lines and JSON documents go through
:func:`echo` and :func:`print_json`.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text


def printable(text: str, encoding: str = "utf-8") -> str:
    """``text`` with every character the encoding cannot represent written as a backslash escape."""
    return text.encode(encoding, "backslashreplace").decode(encoding)


class _PrintableStream(io.TextIOBase):
    """Writes to the current sys.stdout or sys.stderr (looked up at each write, so test runners that swap
    them see the output), escaping what the stream's encoding cannot represent."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr

    @property
    def _stream(self) -> TextIO:
        return sys.stderr if self._stderr else sys.stdout

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        self._stream.write(printable(text, self.encoding))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()


def make_console(*, stderr: bool = False) -> Console:
    """A console that prints strings literally (no markup, emoji codes or highlighting)."""
    return Console(file=_PrintableStream(stderr), markup=False, emoji=False, highlight=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line from plain and (text, style) parts: ``styled(("togi: ", "bold red"), message)``."""
    return Text.assemble(*parts)


def echo(text: str, *, end: str = "\n", stderr: bool = False) -> None:
    """Plain text, unstyled: output that scripts read (ids, JSON lines, event logs) and streamed answers."""
    stream = sys.stderr if stderr else sys.stdout
    stream.write(printable(text + end, getattr(stream, "encoding", None) or "utf-8"))
    stream.flush()


def print_json(document: Any, *, indent: int | None = 2) -> None:
    """A JSON document on stdout; text the terminal cannot encode stays a JSON escape, so it parses back."""
    echo(json.dumps(document, ensure_ascii=False, indent=indent))
