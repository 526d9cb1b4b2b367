"""Malformed data never raises: every broken file gets findings on lines it has, and `togi data check --json` answers in JSON.

Files are generated deterministically (seeded): valid rows of each format (chat, prompt-completion,
preference pairs, KTO, classification; JSONL, a JSON array, CSV), then broken: a field of the wrong type,
a key missing or added, text holding lone surrogates, NUL or control tokens, deep nesting; then, as
bytes, cut off, bytes flipped, invalid UTF-8, another encoding, other line ends.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from togi.data.formats import load_dataset
from togi.data.validate import check_dataset

FILES = 300
CLI_EVERY = 10  # `togi data check` runs on every tenth file: loading the tokenizer costs more than checking

ODD_VALUES: list[Any] = [None, 0, 5, -1, 1.5, True, False, "", " ", "x", [], {}, [1, "a"], {"role": "user"}, "\ud800", "a\udc00b",
                         "\x00", "NUL\x00inside", "<|im_end|>", "<|im_start|>assistant\n", "[" * 50, "\ufdd0", "é" * 300,
                         [[[[[[[[[[[]]]]]]]]]]], {"content": {"content": {"content": None}}}]
ROLES = ["system", "user", "assistant", "tool", "function", "developer", "", "USER", None, 3]


def row(rng: random.Random, format_name: str, number: int) -> dict[str, Any]:
    question, answer = f"質問{number}: 商品{number * 7}の在庫はありますか？", f"商品{number * 7}は{number % 5}点あります。"
    if format_name == "chat":
        return {"messages": [{"role": "system", "content": "丁寧に答えてください。"}, {"role": "user", "content": question},
                             {"role": "assistant", "content": answer}]}
    if format_name == "pairs":
        return {"prompt": question, "completion": answer}
    if format_name == "preference":
        return {"prompt": question, "chosen": answer, "rejected": f"わかりません（{number}）。"}
    if format_name == "kto":
        return {"prompt": question, "completion": answer, "label": rng.choice([True, False])}
    return {"text": question, "label": rng.choice(["positive", "negative"])}


def paths_in(value: Any, path: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``value`` (keys and list indices)."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_in(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths_in(item, path + (index,))
    return found


def break_record(rng: random.Random, record: dict[str, Any]) -> Any:
    """One structural change: a value replaced by one of another type, a key dropped or added, a role changed, deep nesting."""
    path = rng.choice(paths_in(record)[1:])
    parent = record
    for step in path[:-1]:
        parent = parent[step]
    change = rng.randrange(6)
    if change == 0:
        parent[path[-1]] = rng.choice(ODD_VALUES)
    elif change == 1 and isinstance(parent, dict):
        del parent[path[-1]]
    elif change == 2 and isinstance(parent, dict):
        parent[rng.choice(["\ud800", "weight", "tool_calls", "tool_call_id", "function_call", "name", "label", "input", "output",
                           "completion", "chosen", "extra"])] = rng.choice(ODD_VALUES)
    elif change == 3:
        for message in record.get("messages", []) if isinstance(record.get("messages"), list) else []:
            if isinstance(message, dict):
                message["role"] = rng.choice(ROLES)
                break
    elif change == 4:
        deep: Any = "x"
        for _ in range(rng.choice([50, 500])):  # deeper: a line of its own, in break_bytes
            deep = [deep]
        parent[path[-1]] = deep
    else:
        return rng.choice(ODD_VALUES[:14])  # the record is not an object at all
    return record


def serialise(rng: random.Random, records: list[Any], container: str) -> bytes:
    if container == "jsonl":
        return "".join(json.dumps(record, ensure_ascii=rng.random() < 0.5) + "\n" for record in records).encode("utf-8", "surrogatepass")
    if container == "json":
        return json.dumps(records, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2])).encode("utf-8", "surrogatepass") + b"\n"
    columns = ["question", "answer"] if "prompt" in json.dumps(records[0]) else ["text", "label"]
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(columns)
    for record in records:
        values = list(record.values()) if isinstance(record, dict) else [record]
        writer.writerow([value if isinstance(value, str) else json.dumps(value) for value in values[: rng.choice([1, 2, 2, 3])]])
    return text.getvalue().encode("utf-8", "surrogatepass")


def break_bytes(rng: random.Random, data: bytes) -> bytes:
    """One change to the file as bytes."""
    change = rng.randrange(11)
    at = rng.randrange(len(data) + 1)
    if change == 0:
        return data[:at]  # cut off
    if change == 1:
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 5)):
            if flipped:
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        return bytes(flipped)
    if change == 2:
        return data[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf", b"\r", b",,,\n", b"\n\n", b"]"]) + data[at:]
    if change == 3:
        return data.decode("utf-8", "replace").encode(rng.choice(["utf-16", "cp932", "latin-1", "utf-32"]), "replace")
    if change == 4:
        return data.replace(b"\n", rng.choice([b"\r\n", b"\r"]))
    if change == 5:
        return b"\xef\xbb\xbf" + data
    if change == 6:
        return rng.choice([b"", b"[", b"[\n", b"{", b"\n\n", b",\n", b"[1,]\n", b'{"data": []}\n', b"[" * 100_000, b"null\n"])
    if change == 7:
        depth = rng.choice([900, 5000])
        return data[:at] + b'\n{"messages": ' + b"[" * depth + b"]" * depth + b"}\n" + data[at:]
    if change == 8:
        lines = data.split(b"\n")
        return b"\n".join(lines + rng.sample(lines, min(3, len(lines))))  # repeated lines
    return data


def build_files(directory: Path) -> list[Path]:
    files = []
    for number in range(FILES):
        rng = random.Random(number)
        format_name = rng.choice(["chat", "pairs", "preference", "kto", "classification"])
        containers = ["jsonl", "json"] + (["csv"] if format_name in ("pairs", "classification") else [])
        container = rng.choice(containers)
        records: list[Any] = [row(rng, format_name, index) for index in range(rng.randint(1, 14))]
        for _ in range(rng.randint(0, 3)):
            position = rng.randrange(len(records))
            if isinstance(records[position], dict) and records[position]:
                records[position] = break_record(rng, records[position])
        data = serialise(rng, records, container)
        for _ in range(rng.randint(0, 2)):
            data = break_bytes(rng, data)
        path = directory / f"{number:03d}-{format_name}.{container}"
        path.write_bytes(data)
        files.append(path)
    return files


def line_count(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory) -> list[Path]:
    return build_files(tmp_path_factory.mktemp("fuzz"))


def test_checking_a_broken_file_never_raises_and_every_finding_is_on_a_line_the_file_has(broken_files, tokenizer):
    for path in broken_files:
        report = check_dataset(load_dataset(path), tokenizer)
        lines = line_count(path.read_bytes())
        for finding in report.findings:
            assert finding.line is None or 1 <= finding.line <= lines, (path.name, str(finding))
            json.dumps(finding.to_dict(), ensure_ascii=False).encode("utf-8")  # what `--json` prints can be printed


def test_togi_data_check_answers_every_broken_file_in_json(broken_files, tokenizer_dir, cli):
    for path in broken_files[::CLI_EVERY]:
        result = cli("data", "check", path, "--json", "--model", tokenizer_dir)
        assert result.exit_code in (0, 1), (path.name, result.output)
        document = json.loads(result.stdout)
        assert document["ok"] is (result.exit_code == 0) and document["file"] == str(path)
