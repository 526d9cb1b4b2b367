"""Human review (seed 001): a person scores each answer 0-5 for accuracy, relevance and expertise.

Every score is appended to the CSV the moment it is given (and flushed to disk), so Ctrl-C or a closed
terminal loses nothing, and running the review again continues where it stopped. It reads answers
from plain standard input, so it works in a terminal, over a pipe, and in tests.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from togi.data.reader import DataFileError

CRITERIA = ("accuracy", "relevance", "expertise")
CSV_COLUMNS = ("index", "line", "criterion", "score", "reviewed_at")


@dataclass(frozen=True)
class ReviewItem:
    index: int
    line: int
    question: str
    expected: str
    answer: str


def load_review_items(path: Path, model: str = "tuned") -> list[ReviewItem]:
    """Items from an evaluation's records.jsonl (one model's answers), or from a run directory's eval/."""
    records_path = path / "eval" / "records.jsonl" if path.is_dir() else path
    if not records_path.is_file():
        raise DataFileError(records_path, "does not exist: the run has not been evaluated yet", "run `togi eval RUN_DIR --data TEST_FILE` first")
    items = []
    for text in records_path.read_text(encoding="utf-8").splitlines():
        record = json.loads(text)
        if record.get("model", model) == model:
            items.append(ReviewItem(index=record["index"], line=record["line"], question=record["input"],
                                    expected=record["reference"], answer=record["prediction"]))
    return items


def scored_so_far(csv_path: Path) -> set[tuple[int, str]]:
    if not csv_path.is_file():
        return set()
    with csv_path.open(encoding="utf-8", newline="") as handle:
        return {(int(row["index"]), row["criterion"]) for row in csv.DictReader(handle)}


def means(csv_path: Path) -> dict[str, float]:
    if not csv_path.is_file():
        return {}
    totals: dict[str, list[int]] = {}
    with csv_path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            totals.setdefault(row["criterion"], []).append(int(row["score"]))
    return {criterion: sum(values) / len(values) for criterion, values in totals.items()}


class _ScoreWriter:
    def __init__(self, csv_path: Path) -> None:
        new = not csv_path.is_file() or csv_path.stat().st_size == 0
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = csv_path.open("a", encoding="utf-8", newline="")
        self.writer = csv.writer(self.handle)
        if new:
            self.writer.writerow(CSV_COLUMNS)

    def write(self, item: ReviewItem, criterion: str, score: int) -> None:
        self.writer.writerow([item.index, item.line, criterion, score, int(time.time())])
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def ask_score(criterion: str, read: Callable[[], str], say: Callable[[str], None]) -> int | None:
    """A score 0-5 from the reader; None at end of input. Anything else is asked again."""
    while True:
        say(f"{criterion} (0-5): ")
        answer = read()
        if answer == "":
            return None
        answer = answer.strip()
        if answer.isdigit() and 0 <= int(answer) <= 5:
            return int(answer)
        say(f"  please type a whole number from 0 to 5 (got {answer!r})\n")


def run_review(
    items: list[ReviewItem],
    csv_path: Path,
    *,
    stdin: TextIO,
    show: Callable[[ReviewItem, int, int], None],
    say: Callable[[str], None],
) -> tuple[int, bool]:
    """Ask for every score not yet in the CSV. Returns (scores given now, whether the review is complete)."""
    done = scored_so_far(csv_path)
    pending = [item for item in items if any((item.index, criterion) not in done for criterion in CRITERIA)]
    writer = _ScoreWriter(csv_path)
    given = 0
    try:
        for position, item in enumerate(pending, start=1):
            show(item, position, len(pending))
            for criterion in CRITERIA:
                if (item.index, criterion) in done:
                    continue
                score = ask_score(criterion, stdin.readline, say)
                if score is None:
                    return given, False
                writer.write(item, criterion, score)
                given += 1
    finally:
        writer.close()
    return given, True
