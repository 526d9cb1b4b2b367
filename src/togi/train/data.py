"""Training data: load and check the files, hold out a validation split, tokenize with loss labels.

Labels come from ``togi.data.template``, the code ``togi data show`` uses, so what a user inspects is
what the trainer optimises: -100 (no loss) on every token outside a trained assistant message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from togi.config import TrainConfig
from togi.data.examples import ChatExample, Dataset, ExampleKind
from togi.data.findings import Finding, Severity
from togi.data.formats import LoadOptions, load_dataset
from togi.data.split import split_indices
from togi.data.template import RenderedText, tokenize_rendered, trained_char_spans
from togi.data.validate import CheckOptions, check_dataset
from togi.data.writer import example_to_record, write_records
from togi.errors import TogiError
from togi.train.label_weights import LABEL_WEIGHTS, label_token_weights

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100


class TrainingDataError(TogiError):
    """The data cannot be trained on; ``findings`` say why and where."""

    hint = "fix the data, then train again"
    work_failed = True

    def __init__(self, message: str, findings: list[Finding], hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.findings = findings


@dataclass
class TrainingData:
    train: list[ChatExample]
    val: list[ChatExample]
    warnings: list[Finding]


def _load_checked(path: Path, config: TrainConfig, tokenizer: PreTrainedTokenizerBase, *, validation: bool = False) -> tuple[Dataset, list[Finding]]:
    settings = config.data
    options = LoadOptions(format=settings.format, encoding=settings.encoding, input_column=settings.input_column,
                          output_column=settings.output_column, system=settings.system)
    dataset = load_dataset(path, options)
    report = check_dataset(dataset, tokenizer, CheckOptions(max_length=settings.max_length))
    findings = report.findings
    if validation:  # a small validation set is normal: the example-count rules are for training data
        findings = [finding for finding in findings if finding.code != "too_few_examples"]
    errors = [finding for finding in findings if finding.severity is Severity.ERROR]
    if errors:
        raise TrainingDataError(f"{path} has {len(errors)} errors; run `togi data check {path}` for the details", errors)
    if dataset.kind is not ExampleKind.CHAT:
        raise TrainingDataError(
            f"{path} holds {dataset.kind.value} examples; supervised fine-tuning needs chat data "
            "(messages, alpaca, input/output pairs or CSV question/answer)", [],
            "preference pairs train with --stage dpo, orpo or reward, KTO rows with --stage kto, text and label rows with --task classification")
    return dataset, [finding for finding in findings if finding.severity is Severity.WARNING]


def load_training_data(config: TrainConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> TrainingData:
    train_set, warnings = _load_checked(config.data.train_file, config, tokenizer)
    examples = [example for example in train_set.examples if isinstance(example, ChatExample)]
    if config.data.val_file is not None:
        val_set, val_warnings = _load_checked(config.data.val_file, config, tokenizer, validation=True)
        return TrainingData(train=examples, val=[e for e in val_set.examples if isinstance(e, ChatExample)], warnings=warnings + val_warnings)
    if config.data.val_ratio == 0 or len(examples) < 10:
        return TrainingData(train=examples, val=[], warnings=warnings)
    split = split_indices(len(examples), config.data.val_ratio, seed=seed)
    return TrainingData(train=[examples[i] for i in split.train], val=[examples[i] for i in split.val], warnings=warnings)


def save_split(examples: list[ChatExample], path: Path) -> None:
    """The exact examples a run trained or validated on, as OpenAI chat JSONL, for later evaluation."""
    write_records(path, [example_to_record(example, "chat") for example in examples], "jsonl")


def tokenize_examples(
    examples: list[ChatExample],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    train_on_prompt: bool = False,
    label_pattern: re.Pattern[str] | None = None,
    label_loss_weight: float = 1.0,
) -> TokenizedExamples:
    """``input_ids`` and ``labels`` per example, and ``label_weights`` when ``label_loss_weight`` is not 1 (the label
    that ``label_pattern`` reads in the final answer weighs that much in the loss; see ``label_weights.py``).
    Examples left with no trained token after truncation are dropped: they would add no signal."""
    import datasets

    weighed_by = label_pattern if label_loss_weight != 1 else None
    rows: dict[str, list] = {"input_ids": [], "labels": []} | ({LABEL_WEIGHTS: []} if weighed_by else {})
    without_label = 0
    rendered = [RenderedText(*trained_char_spans(tokenizer, example.messages, example.tools)) for example in examples]
    for item, sequence in zip(rendered, tokenize_rendered(tokenizer, rendered, train_on_prompt=train_on_prompt, max_length=max_length)):
        if sequence.n_trained == 0:
            continue
        rows["input_ids"].append(sequence.input_ids)
        rows["labels"].append([token if trained else IGNORE_INDEX for token, trained in zip(sequence.input_ids, sequence.trained)])
        if weighed_by:
            weights = label_token_weights(sequence, item.spans[-1], weighed_by, label_loss_weight) if item.spans else None
            without_label += weights is None
            rows[LABEL_WEIGHTS].append(weights if weights is not None else [1.0] * sequence.n_tokens)
    return TokenizedExamples(datasets.Dataset.from_dict(rows), without_label=without_label)


@dataclass
class TokenizedExamples:
    dataset: datasets.Dataset
    without_label: int  # examples whose final answer holds no label for data.label_loss_weight to weigh
