"""Texts to classify, read from a file: one per line (.txt), or the ``text`` field of each JSONL, JSON,
CSV or TSV row (a JSONL line may also be a bare JSON string). Anything unreadable raises ``DataFileError``
naming the file and line."""

from __future__ import annotations

from pathlib import Path

from togi.data.findings import Severity
from togi.data.reader import DataFileError, read_records

TEXT_SUFFIXES = (".txt", ".jsonl", ".ndjson", ".json", ".csv", ".tsv")
_FILE_HINT = "use a .txt file with one text per line, or .jsonl/.json/.csv/.tsv rows with a \"text\" field"


def read_texts(path: Path | str, *, column: str = "text", encoding: str = "utf-8") -> list[str]:
    path = Path(path)
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise DataFileError(path, f"cannot tell the file type from the extension {path.suffix!r}", _FILE_HINT)
    texts = _lines(path, encoding) if path.suffix.lower() == ".txt" else _fields(path, column, encoding)
    if not texts:
        raise DataFileError(path, "holds no texts", _FILE_HINT)
    return texts


def _lines(path: Path, encoding: str) -> list[str]:
    if not path.is_file():
        raise DataFileError(path, "no such file" if not path.exists() else "is not a regular file", "check the path")
    try:
        text = path.read_text(encoding=encoding)
    except UnicodeDecodeError as error:
        raise DataFileError(path, f"is not valid {encoding} text ({error.reason})", "save it as UTF-8") from None
    except OSError as error:
        raise DataFileError(path, f"cannot be read ({error.strerror})", "check the file's permissions") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _fields(path: Path, column: str, encoding: str) -> list[str]:
    read = read_records(path, encoding=encoding)
    problem = next((finding for finding in read.findings if finding.severity is Severity.ERROR), None)
    if problem is not None:
        raise DataFileError(f"{path}:{problem.line}" if problem.line else path, problem.message, problem.hint)
    texts = []
    for record in read.records:
        value = record.value.get(column) if isinstance(record.value, dict) else record.value
        if not isinstance(value, str) or not value.strip():
            raise DataFileError(f"{path}:{record.line}", f"the row has no {column!r} text", _FILE_HINT)
        texts.append(value)
    return texts
