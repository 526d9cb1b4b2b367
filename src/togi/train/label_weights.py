"""``data.label_loss_weight``: the label's tokens count more in the training loss.

In an answer such as ``ラベル: ネガティブ\\n理由: ...`` one token decides the task (the three labels share their
first token and differ at the second) while some 75 others are format and reason. With every answer token
weighted alike, the loss falls on the reason while the label stays a guess (benchmarks/QUALITY.md, sections 2
and 6). With the label's tokens weighted, their gradient is as large as the rest of the answer's.

The label is what ``monitoring.label_pattern`` reads in the final assistant message (its first group, the whole
match without one), the same text that accuracy is scored on. Its tokens are found with the tokenizer's offset
mapping: every token whose characters overlap the label's. Positions that carry no loss keep weight 1 (their
weight is never used).

The weights ride beside ``labels`` through TRL's collator: ``LabelWeightCollator`` wraps it and lays them out as
it lays out the labels (one flattened row in padding-free batches, rows padded on the right otherwise).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from togi.data.template import TokenizedChat

LABEL_WEIGHTS = "label_weights"  # the dataset column and the batch key


def label_token_weights(sequence: TokenizedChat, answer_span: tuple[int, int], pattern: re.Pattern[str], weight: float) -> list[float] | None:
    """Per token of ``sequence``: ``weight`` where it overlaps the label that ``pattern`` reads inside ``answer_span``
    (the final answer's characters), 1 elsewhere; None when the answer holds no label."""
    start, end = answer_span
    match = pattern.search(sequence.text, start, end)
    if match is None:
        return None
    label_start, label_end = match.span(1 if pattern.groups else 0)
    return [weight if trained and begin < label_end and finish > label_start else 1.0
            for (begin, finish), trained in zip(sequence.offsets, sequence.trained)]


@dataclass
class LabelWeightCollator:
    """A batch collator (TRL's) that also returns ``label_weights``, laid out like its ``labels``: examples
    flattened into one row when it is padding-free, rows padded on the right otherwise (padding weighs 0)."""

    collator: Callable[[list[dict[str, Any]]], dict[str, Any]]

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        weights = [example.get(LABEL_WEIGHTS) for example in examples]
        batch = self.collator([{key: value for key, value in example.items() if key != LABEL_WEIGHTS} for example in examples])
        if any(row is None for row in weights):
            return batch
        labels = batch["labels"]
        rows = [torch.tensor(row, dtype=torch.float32) for row in weights]
        if labels.shape[0] == 1 and len(rows) > 1:  # padding-free: one row of concatenated examples
            rows = [torch.cat(rows)]
        laid_out = torch.zeros(labels.shape, dtype=torch.float32)
        for index, row in enumerate(rows):
            if row.numel() > labels.shape[1]:
                raise ValueError(f"label weights of {row.numel()} tokens for a batch row of {labels.shape[1]}: the collator "
                                 "changed the examples' lengths")
            laid_out[index, : row.numel()] = row
        batch[LABEL_WEIGHTS] = laid_out
        return batch
