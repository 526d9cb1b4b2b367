"""Writing data files: canonical examples out to any supported format, always atomically.

Files are written as UTF-8 with ``ensure_ascii=False`` (Japanese stays readable) to a temporary file
in the target directory, then renamed over the target: a crash never leaves half a file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from togi.data.examples import (
    ChatExample,
    ClassificationExample,
    Example,
    ExampleKind,
    KTOExample,
    Message,
    PreferenceExample,
)
from togi.data.formats import FORMAT_KINDS
from togi.data.reader import container_of
from togi.errors import TogiError

DEFAULT_TARGET = {
    ExampleKind.CHAT: "chat",
    ExampleKind.PREFERENCE: "preference",
    ExampleKind.KTO: "kto",
    ExampleKind.CLASSIFICATION: "classification",
}


class NotConvertible(TogiError, ValueError):
    """This example cannot be expressed in the target format (the reason says why)."""

    hint = "convert to chat (the default), which holds every example"


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def serialize_records(records: list[Any], container: str) -> str:
    """Records (dicts, or any JSON value for JSON containers) as the text of a file of that container."""
    if container == "jsonl":
        return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if container == "json":
        return json.dumps(records, ensure_ascii=False, indent=2) + "\n"
    columns: list[str] = []
    for record in records:
        columns += [key for key in record if key not in columns]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t" if container == "tsv" else ",", lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_cell(record.get(column, "")) for column in columns])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def write_records(path: Path | str, records: list[Any], container: str | None = None) -> None:
    atomic_write_text(path, serialize_records(records, container or container_of(Path(path))))


# Flat formats that fit in CSV/TSV columns; the others hold message lists and need JSON.
TABLE_FORMATS = ("pairs", "classification")


def default_target(kind: ExampleKind, container: str) -> str:
    if container in ("csv", "tsv") and kind is ExampleKind.CHAT:
        return "pairs"
    return DEFAULT_TARGET[kind]


def check_target(kind: ExampleKind, target: str, container: str = "jsonl") -> None:
    if FORMAT_KINDS.get(target) is not kind:
        compatible = [name for name, format_kind in FORMAT_KINDS.items() if format_kind is kind]
        raise NotConvertible(f"{kind.value} examples cannot be written as {target}; choose one of: {', '.join(compatible)}",
                             "pass one of them with --to")
    if container in ("csv", "tsv") and target not in TABLE_FORMATS:
        raise NotConvertible(f"{target} records hold message lists, which do not fit in {container.upper()} columns; write .jsonl instead",
                             "name the output file .jsonl, or convert to pairs")


def example_to_record(example: Example, target: str, container: str = "jsonl") -> dict[str, Any]:
    """One canonical example as a record of the ``target`` format. CSV/TSV pairs use the
    ``question``/``answer`` columns that ``togi data check`` reads by default."""
    if isinstance(example, ChatExample):
        return _chat_record(example, target, container)
    if isinstance(example, PreferenceExample):
        return _preference_record(example, target)
    if isinstance(example, KTOExample):
        split = max(i for i, m in enumerate(example.messages) if m.role != "assistant") + 1
        return {"prompt": _dicts(example.messages[:split]), "completion": _dicts(example.messages[split:]), "label": example.label}
    if isinstance(example, ClassificationExample):
        return {"text": example.text, "label": example.label}
    raise TypeError(f"not an example: {type(example).__name__}")


def _dicts(messages: list[Message]) -> list[dict[str, Any]]:
    return [message.to_openai_dict() for message in messages]


def _chat_record(example: ChatExample, target: str, container: str) -> dict[str, Any]:
    if target == "chat":
        record: dict[str, Any] = {"messages": _dicts(example.messages)}
        if example.tools is not None:
            record["tools"] = example.tools
        if example.parallel_tool_calls is not None:
            record["parallel_tool_calls"] = example.parallel_tool_calls
        return record
    system, turns = _single_turns(example)
    if target == "pairs" and len(turns) != 1:
        raise NotConvertible("pairs hold one question and one answer; this conversation has several turns")
    *history, (question, answer) = turns
    if target == "alpaca":
        record = {"instruction": question, "input": "", "output": answer}
        if history:
            record["history"] = [list(turn) for turn in history]
    elif container in ("csv", "tsv"):
        record = {"question": question, "answer": answer}
    else:
        record = {"prompt": question, "completion": answer}
    if system is not None:
        record["system"] = system
    return record


def _single_turns(example: ChatExample) -> tuple[str | None, list[tuple[str, str]]]:
    """(system prompt, [(user, assistant), ...]) for a plain alternating conversation."""
    messages = example.messages
    system = messages[0].content if messages and messages[0].role == "system" else None
    rest = messages[1:] if system is not None else messages
    if example.tools or any(m.tool_calls or m.role not in ("user", "assistant") for m in rest):
        raise NotConvertible("tool calls and tool messages exist only in the chat format")
    if any(m.weight == 0 for m in rest):
        raise NotConvertible("per-message weights exist only in the chat format")
    roles = [m.role for m in rest]
    if not rest or roles != ["user", "assistant"] * (len(rest) // 2):
        raise NotConvertible("only alternating user/assistant conversations can be written in this format")
    return system, [(rest[i].content, rest[i + 1].content) for i in range(0, len(rest), 2)]


def _preference_record(example: PreferenceExample, target: str) -> dict[str, Any]:
    if target == "preference":
        return {"prompt": _dicts(example.prompt), "chosen": _dicts(example.chosen), "rejected": _dicts(example.rejected)}
    if len(example.chosen) != 1 or len(example.rejected) != 1:
        raise NotConvertible("openai_dpo holds exactly one assistant message per answer")
    conversation: dict[str, Any] = {"messages": _dicts(example.prompt)}
    if example.tools is not None:
        conversation["tools"] = example.tools
    return {"input": conversation, "preferred_output": _dicts(example.chosen), "non_preferred_output": _dicts(example.rejected)}
