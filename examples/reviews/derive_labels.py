"""Derive reviews-labels.jsonl ({"text", "label"} rows, for task: classification) from reviews.jsonl:
the text is the review (the user's message), the label the word after "ラベル: " in the answer.

    .venv/bin/python examples/reviews/derive_labels.py
"""

import re
from pathlib import Path

from togi.data.formats import load_dataset
from togi.data.labels import label_of
from togi.data.writer import write_records

HERE = Path(__file__).resolve().parent
LABEL = re.compile(r"ラベル: (\S+)")

reviews = load_dataset(HERE / "reviews.jsonl")
rows = [{"text": example.input_text, "label": label_of(example, LABEL)} for example in reviews.examples]
unlabelled = [example.source.line for example, row in zip(reviews.examples, rows) if not row["label"]]
if unlabelled or len(rows) != len(reviews.raw_records):
    raise SystemExit(f"reviews.jsonl: lines {unlabelled} have no 'ラベル: ...' line, or some records are invalid")
write_records(HERE / "reviews-labels.jsonl", rows)
print(f"wrote {len(rows)} rows to {HERE / 'reviews-labels.jsonl'}")
