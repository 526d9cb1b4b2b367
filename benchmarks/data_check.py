"""`togi data check` on large and odd files: many short rows, long conversations, one huge line.

    .venv/bin/python benchmarks/data_check.py                  # every case, 300 s limit each
    .venv/bin/python benchmarks/data_check.py --only chat_100k --timeout 120
    .venv/bin/python benchmarks/data_check.py --repeats 3                     # medians of 3 runs

Each case's file is built deterministically in a temporary directory, then ``togi data check FILE
--json`` runs in its own subprocess (``.venv/bin/togi``, the default tokenizer: the embedded
SmolLM2-135M-Instruct), so a figure is what a user waits for: interpreter start, reading, the
tokenizer's load, the checks and the JSON output. Beside the wall time, the CPU time the process used
(user + system; the tokenizer runs on both cores, the rest on one): on a shared machine the wall time
grows with other processes' load, the CPU time much less. The time to load the tokenizer alone (a
check of a 12-row file) is printed first, to be subtracted mentally. A case still running after
``--timeout`` seconds is stopped and reported as such.

| case             | file                                                                        |
|------------------|-----------------------------------------------------------------------------|
| chat_100k        | 100,000 short chat rows (a question and an answer of a few words each)      |
| pairs_100k       | 100,000 short preference rows {prompt, chosen, rejected}                    |
| conversation_1k  | one chat row of 1,000 messages, user and assistant alternating              |
| conversation_4k  | one chat row of 4,000 messages                                              |
| line_5mib        | 20 ordinary rows and one row whose user message is a 5 MiB text             |
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

TOGI = Path(sys.executable).with_name("togi")
WORDS = ("order ship today arrive battery charge screen bright return refund price size color model update "
         "注文 発送 到着 返品 在庫 料金 画面 電池 色 大きさ 更新 確認 届く 使う 良い 悪い").split()


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _chat(user: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def short_chats(count: int) -> list[dict[str, Any]]:
    rng = random.Random(0)
    return [_chat(f"{_sentence(rng, 3)} {i}?", f"{_sentence(rng, 3)} {i}.") for i in range(count)]


def short_pairs(count: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    return [{"prompt": f"{_sentence(rng, 3)} {i}?", "chosen": f"{_sentence(rng, 3)} {i}.", "rejected": f"{_sentence(rng, 2)} no {i}."}
            for i in range(count)]


def conversation(messages: int) -> list[dict[str, Any]]:
    rng = random.Random(2)
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{_sentence(rng, 8)} {i}."} for i in range(messages)]
    return [{"messages": turns}]


def huge_line(mebibytes: int = 5) -> list[dict[str, Any]]:
    rng = random.Random(3)
    parts, size = [], 0
    while size < mebibytes * 2**20:
        part = _sentence(rng, 12) + "。\n"
        parts.append(part)
        size += len(part.encode("utf-8"))
    return short_chats(20) + [_chat("".join(parts), "A long text: here is its summary.")]


CASES: dict[str, Callable[[], list[dict[str, Any]]]] = {
    "chat_100k": lambda: short_chats(100_000),
    "pairs_100k": lambda: short_pairs(100_000),
    "conversation_1k": lambda: conversation(1_000),
    "conversation_4k": lambda: conversation(4_000),
    "line_5mib": huge_line,
}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def time_check(path: Path, timeout: float) -> tuple[float, float, str]:
    """Wall and CPU seconds of ``togi data check PATH --json`` and what it found (exit code, findings by severity)."""
    before = os.times()
    start = time.perf_counter()
    try:
        result = subprocess.run([str(TOGI), "data", "check", str(path), "--json"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, float("nan"), f"stopped after {timeout:g} s"
    seconds = time.perf_counter() - start
    after = os.times()
    cpu = after.children_user - before.children_user + after.children_system - before.children_system
    try:
        summary = json.loads(result.stdout)["summary"]
    except (json.JSONDecodeError, KeyError):
        return seconds, cpu, f"exit {result.returncode}, no JSON: {result.stderr.strip().splitlines()[-1:]}"
    return seconds, cpu, f"exit {result.returncode}, {summary['error']} errors, {summary['warning']} warnings, {summary['info']} notes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), help="run these cases only")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a case is stopped")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; the medians are reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        baseline = write_jsonl(Path(directory) / "baseline.jsonl", short_chats(12))
        seconds, cpu, outcome = time_check(baseline, args.timeout)
        print(f"start-up and tokenizer load (12 rows): {seconds:.1f} s, {cpu:.1f} s CPU ({outcome})", flush=True)
        print("| case | file size | wall s | CPU s | outcome |")
        print("|---|---|---|---|---|", flush=True)
        for name in args.only or CASES:
            path = write_jsonl(Path(directory) / f"{name}.jsonl", CASES[name]())
            runs = [time_check(path, args.timeout) for _ in range(args.repeats)]
            seconds, cpu = statistics.median(run[0] for run in runs), statistics.median(run[1] for run in runs)
            print(f"| {name} | {path.stat().st_size / 2**20:.1f} MiB | {seconds:.1f} | {cpu:.1f} | {runs[-1][2]} |", flush=True)


if __name__ == "__main__":
    main()
