"""Labels of examples, for label distribution, imbalance checks and stratified splits.

Classification and KTO examples carry their label. Chat and preference examples have none, but
a task with fixed-format answers ("ラベル: ポジティブ ...") has one inside the answer: a
``label_pattern`` regular expression extracts it from the final answer (its first group, or the
whole match when it has no group). ``accuracy_and_macro_f1`` scores predicted labels against expected
ones, for ``togi eval`` and for classifiers during training.
"""

from __future__ import annotations

import re
from typing import Sequence

from togi.data.examples import ClassificationExample, Example, KTOExample
from togi.errors import TogiError


class LabelPatternError(TogiError, ValueError):
    """A label pattern that is not a regular expression."""

    hint = "its first group is the label, e.g. --label-pattern 'ラベル: (\\S+)'"


def compile_label_pattern(pattern: str | None) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern, re.MULTILINE)
    except re.error as error:
        raise LabelPatternError(f"--label-pattern {pattern!r} is not a valid regular expression: {error}") from error


def label_of(example: Example, pattern: re.Pattern[str] | None = None) -> str | None:
    if isinstance(example, ClassificationExample):
        return example.label
    if isinstance(example, KTOExample):
        return "desirable" if example.label else "undesirable"
    if pattern is None:
        return None
    return label_in(example.final_answer, pattern)


def label_in(text: str, pattern: re.Pattern[str]) -> str | None:
    """The label the pattern reads in a text: its first group, or the whole match when it has none."""
    match = pattern.search(text)
    if match is None:
        return None
    return (match.group(1) if pattern.groups else match.group(0)).strip()


def has_own_labels(example: Example) -> bool:
    return isinstance(example, (ClassificationExample, KTOExample))


def accuracy_and_macro_f1(predicted: Sequence[str | None], expected: Sequence[str]) -> tuple[float, float]:
    """Accuracy, and the mean over the expected classes of each class's F1 (a missing label is wrong)."""
    if not expected:
        return 0.0, 0.0
    accuracy = sum(p == e for p, e in zip(predicted, expected)) / len(expected)
    scores = []
    for label in sorted(set(expected)):
        true_positive = sum(p == label and e == label for p, e in zip(predicted, expected))
        predicted_positive = sum(p == label for p in predicted)
        actual_positive = sum(e == label for e in expected)
        precision = true_positive / predicted_positive if predicted_positive else 0.0
        recall = true_positive / actual_positive
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return accuracy, sum(scores) / len(scores)
