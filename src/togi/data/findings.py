"""Problems found in user data, as values.

A finding says what is wrong (a stable ``code``), how bad it is (``severity``), where it is (file,
1-based line, 0-based example index, 0-based message index, field path) and what to do (``hint``).
Checking never raises for bad data: it returns findings. The CLI renders them, the server puts them
in a job's error, and tests assert on their codes and lines.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Iterable


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"

    @property
    def rank(self) -> int:
        return {"error": 0, "warning": 1, "info": 2}[self.value]


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    message: str
    hint: str
    file: str
    line: int | None = None
    example: int | None = None
    message_index: int | None = None
    field: str | None = None

    @property
    def location(self) -> str:
        """``file:line`` followed by the example and field, e.g. ``data.jsonl:12 example 11 messages[2].content``."""
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.example is not None:
            where += f" example {self.example}"
        if self.field:
            where += f" {self.field}"
        elif self.message_index is not None:
            where += f" messages[{self.message_index}]"
        return where

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["severity"] = self.severity.value
        return data

    def __str__(self) -> str:
        return f"{self.location}: {self.severity.value}[{self.code}] {self.message} (hint: {self.hint})"


def count_by_severity(findings: Iterable[Finding]) -> dict[str, int]:
    counts = {severity.value: 0 for severity in Severity}
    for finding in findings:
        counts[finding.severity.value] += 1
    return counts


def has_errors(findings: Iterable[Finding]) -> bool:
    return any(finding.severity is Severity.ERROR for finding in findings)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """File order first (line, then message), so a user can walk the file top to bottom."""
    return sorted(
        findings,
        key=lambda f: (
            f.file,
            f.line if f.line is not None else 0,
            f.message_index if f.message_index is not None else -1,
            f.severity.rank,
            f.code,
        ),
    )
