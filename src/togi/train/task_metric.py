"""The user's task metric during training: at each evaluation, the model answers the validation prompts
greedily and the answers are scored against the references.

A falling loss says little about a task whose answer turns on a few tokens: in the bundled reviews, the
label that decides the task is one token of about seventy in each answer, and a model can lower the loss
on the reasons while it answers every review with the same label. So togi can watch the metric the user
cares about — label accuracy or macro-F1 (through ``monitoring.label_pattern``), exact match or ROUGE-L —
log and plot it beside the loss, stop early and keep the best checkpoint by it, and warn when the
predictions collapse onto one label.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from togi.data.answer_metrics import exact_match, rouge_l
from togi.data.examples import ChatExample
from togi.data.labels import accuracy_and_macro_f1, label_in
from togi.data.template import render_chat
from togi.models.generation import answer_budget, generate_answers

LABEL_METRICS = ("accuracy", "macro_f1")
COLLAPSE_SHARE = 0.75  # one label in at least this share of the answers ...
COLLAPSE_REFERENCE_SHARE = 0.5  # ... while it is under this share of the references


@dataclass(frozen=True)
class TaskScores:
    metrics: dict[str, float]  # accuracy and macro_f1, or exact_match, or rouge_l
    predicted_labels: list[str | None]
    expected_labels: list[str]
    answers: list[str]

    def collapse(self) -> str | None:
        """A sentence when most answers carry one label that the references do not favour, else None."""
        if not self.predicted_labels:
            return None
        label, count = Counter(self.predicted_labels).most_common(1)[0]
        share = count / len(self.predicted_labels)
        reference_share = self.expected_labels.count(label) / len(self.expected_labels) if label is not None else 0.0
        if share < COLLAPSE_SHARE or reference_share >= COLLAPSE_REFERENCE_SHARE or len(set(self.expected_labels)) < 2:
            return None
        said = f"the label {label!r}" if label is not None else "no label the pattern finds"
        return (f"{count} of {len(self.predicted_labels)} validation answers carry {said} ({reference_share:.0%} of the references do): "
                "the predictions have collapsed onto one label")


    def cut_labels(self, max_new_tokens: int) -> str | None:
        """A sentence when answers stop inside a label (their label is the start of a reference label and no
        label itself): the answer limit cut them before the label ended, so they score as wrong."""
        known = set(self.expected_labels)
        cut = [label for label in self.predicted_labels
               if label is not None and label not in known and any(reference.startswith(label) for reference in known)]
        if not cut:
            return None
        return (f"{len(cut)} of {len(self.predicted_labels)} validation answers end inside a label (e.g. {cut[0]!r}): the answer limit "
                f"of {max_new_tokens} tokens cut them off; raise monitoring.eval_max_new_tokens")


class TaskScorer:
    """Scores a model on (up to ``limit``) validation examples with ``metric``."""

    def __init__(self, examples: Sequence[ChatExample], tokenizer: Any, metric: str, *, label_pattern: re.Pattern[str] | None,
                 limit: int, max_new_tokens: int | None = None, batch_size: int = 8) -> None:
        if metric in LABEL_METRICS and label_pattern is None:
            raise ValueError(f"the task metric {metric} needs a label pattern")
        self.examples = list(examples)[:limit]
        self.tokenizer = tokenizer
        self.metric = metric
        self.label_pattern = label_pattern
        self.references = [example.final_answer for example in self.examples]
        self.prompts = [render_chat(tokenizer, example.prompt_messages, example.tools, add_generation_prompt=True) for example in self.examples]
        self.max_new_tokens = max_new_tokens or answer_budget(tokenizer, self.references)
        self.batch_size = batch_size

    def label(self, text: str) -> str | None:
        assert self.label_pattern is not None
        return label_in(text, self.label_pattern)

    def score(self, model: Any) -> TaskScores:
        padding_side, was_training = self.tokenizer.padding_side, model.training
        try:
            answers = [answer.text for answer in generate_answers(model, self.tokenizer, self.prompts, max_new_tokens=self.max_new_tokens,
                                                                  batch_size=self.batch_size)]
        finally:
            self.tokenizer.padding_side = padding_side
            model.train(was_training)
        return self.score_answers(answers)

    def score_answers(self, answers: list[str]) -> TaskScores:
        if self.metric in LABEL_METRICS:
            expected = [self.label(reference) or "" for reference in self.references]
            predicted = [self.label(answer) for answer in answers]
            accuracy, macro_f1 = accuracy_and_macro_f1(predicted, expected)
            return TaskScores({"accuracy": accuracy, "macro_f1": macro_f1}, predicted, expected, answers)
        score: Callable[[str, str], float] = exact_match if self.metric == "exact_match" else rouge_l
        value = sum(score(answer, reference) for answer, reference in zip(answers, self.references)) / max(len(answers), 1)
        return TaskScores({self.metric: value}, [], [], answers)
