"""Reading data files into raw records, each tied to the line it came from.

This is the only module that touches bytes. It knows containers (JSONL, a JSON array, CSV, TSV),
not example shapes: ``formats.py`` turns the raw records into canonical examples. Everything that
can go wrong with one line (bad encoding, broken JSON, a huge line, a cut-off last line, a lone
surrogate that is no character) becomes a finding on that line and reading goes on; only a file that
cannot be opened at all raises ``DataFileError``.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from togi.data.findings import Finding, Severity
from togi.errors import TogiError

# A single record larger than this is almost certainly a mistake (a whole file on one line, an
# embedded binary); parsing it would only waste memory.
MAX_RECORD_BYTES = 8 * 1024 * 1024

# A JSON escape of a UTF-16 surrogate, or a surrogate itself (only a non-UTF-8 --encoding can decode one):
# where neither occurs, a record holds no lone surrogate and is not searched for one.
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")

CONTAINERS = ("jsonl", "json", "csv", "tsv")
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}


class DataFileError(TogiError):
    """The file cannot be read at all (missing, a directory, unknown type). One line for the user."""

    def __init__(self, path: Path | str, problem: str, hint: str) -> None:
        super().__init__(f"{path}: {problem}", hint)
        self.path = str(path)


@dataclass(frozen=True)
class RawRecord:
    """One parsed record: a JSON value, or a CSV row as a dict of strings."""

    line: int  # 1-based line where the record starts
    index: int  # 0-based position among the file's records
    value: Any


@dataclass
class ReadResult:
    path: Path
    container: str
    records: list[RawRecord] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    csv_header: list[str] | None = None


def container_of(path: Path) -> str:
    container = _EXTENSIONS.get(path.suffix.lower())
    if container is None:
        raise DataFileError(
            path,
            f"cannot tell the file type from the extension {path.suffix!r}",
            "name the file .jsonl, .json, .csv or .tsv",
        )
    return container


def read_records(path: Path | str, encoding: str = "utf-8") -> ReadResult:
    path = Path(path)
    require_readable_file(path)
    container = container_of(path)
    data = path.read_bytes()
    result = ReadResult(path=path, container=container)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
        result.findings.append(
            _finding(path, "utf8_bom", Severity.INFO, "the file starts with a UTF-8 byte-order mark", "harmless: togi skips it; some tools do not", line=1)
        )
    if encoding.lower().replace("-", "").replace("_", "").startswith(("utf16", "utf32")):
        # Lines are split on the byte b"\n", which only ASCII-compatible encodings allow: re-encode first.
        try:
            data, encoding = data.decode(encoding).encode("utf-8"), "utf-8"
        except UnicodeDecodeError as error:
            result.findings.append(_finding(path, "invalid_encoding", Severity.ERROR, f"the file is not valid {encoding}: {error.reason}",
                                            "check --encoding"))
            return result
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        result.findings.append(
            _finding(path, "invalid_encoding", Severity.ERROR, "the file is UTF-16 (Excel's 'Unicode text')",
                     "save it as UTF-8, or pass --encoding utf-16", line=1)
        )
        return result
    if not data.strip():
        result.findings.append(
            _finding(path, "empty_file", Severity.ERROR, "the file has no data", "fill the file with examples, one per line for JSONL")
        )
        return result
    if container == "json" and data.lstrip()[:1] != b"[":
        if _is_single_json_object(data, encoding, result):
            return result
        container = result.container = "jsonl"  # a .json file holding one object per line
    if container == "jsonl":
        _read_jsonl(data, encoding, result)
    elif container == "json":
        _read_json_array(data, encoding, result)
    else:
        _read_delimited(data, encoding, "\t" if container == "tsv" else ",", result)
    return result


def require_readable_file(path: Path) -> None:
    if not path.exists():
        raise DataFileError(path, "no such file", "check the path; relative paths start from the current directory")
    if path.is_dir():
        raise DataFileError(path, "is a directory, not a file", "pass the data file inside it, e.g. DIR/train.jsonl")
    if not path.is_file():
        raise DataFileError(path, "is not a regular file", "pass a .jsonl, .json, .csv or .tsv file")
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise DataFileError(path, f"cannot be opened ({error.strerror})", "check the file's permissions") from error


def _finding(path: Path, code: str, severity: Severity, message: str, hint: str, line: int | None = None,
             field: str | None = None) -> Finding:
    return Finding(code=code, severity=severity, message=message, hint=hint, file=str(path), line=line, field=field)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # one for every record: json.loads builds one per call


def _decode(raw: bytes, encoding: str, path: Path, line: int, result: ReadResult) -> str | None:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as error:
        hint = "re-save the file as UTF-8"
        if encoding.replace("-", "").lower() == "utf8":
            try:
                raw.decode("cp932")
                hint = "this looks like Shift_JIS (cp932): re-save as UTF-8 (iconv -f cp932 -t utf-8) or pass --encoding cp932"
            except UnicodeDecodeError:
                pass
        line_start = raw.rfind(b"\n", 0, error.start) + 1  # ``raw`` may be a whole file
        result.findings.append(
            _finding(path, "invalid_encoding", Severity.ERROR, f"bytes that are not valid {encoding} (the first at byte {error.start - line_start + 1} of the line)",
                     hint, line=line + raw.count(b"\n", 0, line_start))
        )
        return None


def _read_jsonl(data: bytes, encoding: str, result: ReadResult) -> None:
    path = result.path
    lines = data.split(b"\n")
    ends_with_newline = lines[-1] == b""
    if ends_with_newline:
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            result.findings.append(
                _finding(path, "blank_line", Severity.INFO, "blank line", "blank lines are skipped; remove them for other tools", line=number)
            )
            continue
        if len(raw) > MAX_RECORD_BYTES:
            result.findings.append(
                _finding(
                    path,
                    "line_too_large",
                    Severity.ERROR,
                    f"the line is {len(raw) / 2**20:.1f} MiB, over the {MAX_RECORD_BYTES // 2**20} MiB limit for one example",
                    "split it: JSONL holds one example per line, and one example should be far smaller",
                    line=number,
                )
            )
            continue
        text = _decode(raw, encoding, path, number, result)
        if text is None:
            continue
        try:
            value = _DECODER.decode(text)
        except RecursionError:
            result.findings.append(_finding(path, "invalid_json", Severity.ERROR, "the JSON is nested too deeply to read",
                                            "an example needs only a few levels: messages, then message objects", line=number))
            continue
        except (json.JSONDecodeError, ValueError) as error:
            is_last = number == len(lines)
            result.findings.append(_json_error_finding(path, number, error, truncated=is_last and not ends_with_newline))
            continue
        _add_record(result, number, value, text)


def _is_single_json_object(data: bytes, encoding: str, result: ReadResult) -> bool:
    """A .json file holding one object (often ``{"data": [...]}``) rather than an array: say where the examples are."""
    try:
        value = json.loads(data.decode(encoding))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    if not isinstance(value, dict) or len(data.strip().splitlines()) == 1:
        return False
    lists = [key for key, item in value.items() if isinstance(item, list)]
    hint = f"the examples seem to be under {lists[0]!r}: save that list as the file" if lists else "write a JSON array of examples, or JSONL"
    result.findings.append(_finding(result.path, "not_an_array", Severity.ERROR, "the .json file holds one object, not an array of examples", hint, line=1))
    return True


def _json_error_finding(path: Path, line: int, error: Exception, truncated: bool) -> Finding:
    if isinstance(error, json.JSONDecodeError):
        message = f"invalid JSON at column {error.colno}: {error.msg}"
        line = line + error.lineno - 1
    else:
        message = f"invalid JSON: {error}"
    hint = "each line must be one complete JSON object"
    if truncated:
        message = f"the last line is cut off ({message})"
        hint = "the file looks truncated: re-export it, or delete the partial last line"
    return _finding(path, "invalid_json", Severity.ERROR, message, hint, line=line)


def _read_json_array(data: bytes, encoding: str, result: ReadResult) -> None:
    """Parse ``[obj, obj, ...]`` element by element so each record knows its starting line."""
    path = result.path
    text = _decode(data, encoding, path, 1, result)
    if text is None:
        return
    position = text.index("[") + 1
    line, counted_to = 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted_to
        line += text.count("\n", counted_to, offset)
        counted_to = offset
        return line

    content_end = len(text.rstrip(" \t\r\n"))  # a finding about the end of the file goes on its last line with content
    expecting_value = True
    comma = None  # where the last comma between elements is
    while True:
        position = _skip_whitespace(text, position)
        if position >= len(text):
            result.findings.append(
                _finding(path, "invalid_json", Severity.ERROR, "the JSON array is not closed with ']'", "the file looks truncated: re-export it", line=line_at(content_end))
            )
            return
        char = text[position]
        if char == "]":
            if expecting_value and comma is not None:
                result.findings.append(_finding(path, "invalid_json", Severity.ERROR, "a comma after the last element of the array",
                                                "remove it: JSON allows none there, and other tools refuse the file", line=line_at(comma)))
            rest = text[position + 1 :].strip()
            if rest:
                result.findings.append(
                    _finding(path, "invalid_json", Severity.ERROR, "extra data after the closing ']'", "a .json file holds one array", line=line_at(position + 1 + text[position + 1 :].index(rest[0])))
                )
            return
        if char == "," and not expecting_value:
            comma = position
            position += 1
            expecting_value = True
            continue
        start_line = line_at(position)
        try:
            value, end = _DECODER.raw_decode(text, position)
        except json.JSONDecodeError as error:
            if error.pos >= content_end:
                message, hint = f"the file ends inside this element ({error.msg})", "the file looks truncated: re-export it"
            else:
                message, hint = f"invalid JSON at column {error.colno}: {error.msg}", "fix this element; the rest of the array cannot be read past it"
            result.findings.append(_finding(path, "invalid_json", Severity.ERROR, message, hint, line=line_at(min(error.pos, content_end))))
            return
        except (ValueError, RecursionError) as error:
            message = "the JSON is nested too deeply to read" if isinstance(error, RecursionError) else f"invalid JSON: {error}"
            result.findings.append(_finding(path, "invalid_json", Severity.ERROR, message, "fix this element", line=start_line))
            return
        if not expecting_value:
            result.findings.append(_finding(path, "invalid_json", Severity.ERROR, "missing ',' between array elements", "separate elements with commas", line=start_line))
            return
        _add_record(result, start_line, value, text[position:end])
        position, expecting_value = end, False


def _add_record(result: ReadResult, line: int, value: Any, text: str) -> None:
    """Keep a parsed record, unless a key or string in it holds a lone surrogate (``"\\ud800"``): such
    text cannot be encoded as UTF-8, so it can be neither tokenized nor written out again."""
    if _MAYBE_SURROGATE.search(text):
        where = _lone_surrogate_path(value)
        if where is not None:
            named = f"'{where}'" if where else "the record"
            result.findings.append(_finding(
                result.path, "invalid_unicode", Severity.ERROR,
                f"{named} holds a lone UTF-16 surrogate, which is not a character: the text cannot be encoded as UTF-8",
                "fix the \\uD800-\\uDFFF escape (a high surrogate must be followed by a low one, as in \\ud83d\\ude00) or remove it",
                line=line, field=where or None,
            ))
            return
    result.records.append(RawRecord(line=line, index=len(result.records), value=value))


def _lone_surrogate_path(value: Any) -> str | None:
    """The path (``messages[0].content``; ``""`` for the record itself) of the first key or string that
    holds a lone surrogate, the surrogate written as an escape; None if there is none."""
    pending: list[tuple[str, str, Any]] = [("", "", value)]  # (path, the key that leads there, value)
    while pending:  # a loop, not recursion: the value may be nested as deeply as the JSON parser allows
        path, key, item = pending.pop()
        if _SURROGATE.search(key) or (isinstance(item, str) and _SURROGATE.search(item)):
            return path
        if isinstance(item, list):
            pending += [(f"{path}[{index}]", "", element) for index, element in reversed(list(enumerate(item)))]
        elif isinstance(item, dict):
            pending += [(f"{path}.{_escaped(name)}" if path else _escaped(name), name, element) for name, element in reversed(item.items())]
    return None


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _read_delimited(data: bytes, encoding: str, delimiter: str, result: ReadResult) -> None:
    """CSV/TSV: the first row is the header; each later row becomes a dict of column -> string."""
    path = result.path
    bad_lines: set[int] = set()
    decoded_lines = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        text = _decode(raw, encoding, path, number, result)
        if text is None:
            bad_lines.add(number)
            text = ""
        decoded_lines.append(text)
    csv.field_size_limit(MAX_RECORD_BYTES)
    # Line by line, so that line numbers count "\n" as everywhere else (the csv module also ends a line at "\r").
    reader = csv.reader((line + "\n" for line in decoded_lines), delimiter=delimiter)
    header: list[str] | None = None
    previous_end = 0
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            result.findings.append(
                _finding(path, "invalid_csv", Severity.ERROR, f"cannot parse this row: {error}", "check the quoting of this row; fields with newlines or quotes must be quoted", line=reader.line_num)
            )
            break
        start, previous_end = previous_end + 1, reader.line_num
        if not any(cell.strip() for cell in row):
            if len(row) > 1:  # delimiters and nothing else; a blank line is just skipped
                result.findings.append(_finding(path, "empty_row", Severity.WARNING, "the row has no values; it is skipped",
                                                "delete it: other tools read it as an example with empty fields", line=start))
            continue
        if header is None:
            header = [name.strip() for name in row]
            result.csv_header = header
            continue
        if bad_lines.intersection(range(start, reader.line_num + 1)):
            continue
        if len(row) != len(header):
            result.findings.append(
                _finding(
                    path,
                    "csv_field_count",
                    Severity.ERROR,
                    f"the row has {len(row)} fields but the header has {len(header)}",
                    "quote fields that contain the delimiter, or fill missing cells",
                    line=start,
                )
            )
            continue
        _add_record(result, start, dict(zip(header, row)), "".join(row))
    if header is None and not result.findings:
        result.findings.append(_finding(path, "empty_file", Severity.ERROR, "the file has no header row", "the first row must name the columns"))
