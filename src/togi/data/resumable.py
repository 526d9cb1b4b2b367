"""A JSONL output written one record at a time, so that a run killed half-way can be continued.

Each record is one ``write`` of a whole line, flushed and synced before the next is made: a kill loses
at most the record in flight. Opening the file again reads the keys of the records already there (the
caller says where a record keeps its key) and drops a cut-off last line, the only trace a kill can leave.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, TextIO

from togi.data.reader import DataFileError


class ResumableJsonl:
    def __init__(self, path: Path | str, key_of: Callable[[dict[str, Any]], str | None]) -> None:
        self.path = Path(path)
        self.done: set[str] = set()  # keys of the records already in the file
        self.dropped_partial_line = False
        self._key_of = key_of
        self._handle: TextIO | None = None

    def __enter__(self) -> ResumableJsonl:
        if self.path.is_dir():
            raise DataFileError(self.path, "is a directory", "pass a .jsonl file name for the output")
        if self.path.is_file():
            self._read_existing()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.path.open("a", encoding="utf-8", newline="\n")
        return self

    def _read_existing(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            complete = data.rfind(b"\n") + 1
            with self.path.open("r+b") as handle:
                handle.truncate(complete)
            data, self.dropped_partial_line = data[:complete], True
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise DataFileError(self.path, f"line {number} is not valid JSON, so the file cannot be continued",
                                    "write to a new file, or remove that line") from None
            key = self._key_of(record) if isinstance(record, dict) else None
            if key:
                self.done.add(key)

    def append(self, record: dict[str, Any]) -> None:
        assert self._handle is not None, "use ResumableJsonl in a with block"
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.close()
