"""Training data: load and check the files, hold out a validation split, tokenize with loss labels.

Labels come from ``togi.data.template``, the code ``togi data show`` uses, so what a user inspects is
what the trainer optimises: -100 (no loss) on every token outside a trained assistant message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from togi.config import TrainConfig
from togi.data.examples import ChatExample, Dataset, ExampleKind
from togi.data.findings import Finding, Severity
from togi.data.formats import LoadOptions, load_dataset
from togi.data.split import split_indices
from togi.data.template import tokenize_chat
from togi.data.validate import CheckOptions, check_dataset
from togi.data.writer import example_to_record, write_records
from togi.errors import TogiError

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
) -> datasets.Dataset:
    """A ``datasets.Dataset`` with ``input_ids`` and ``labels``.
    Examples left with no trained token after truncation are dropped: they would add no signal."""
    import datasets

    rows: dict[str, list] = {"input_ids": [], "labels": []}
    for example in examples:
        sequence = tokenize_chat(tokenizer, example.messages, example.tools, train_on_prompt=train_on_prompt, max_length=max_length)
        if sequence.n_trained == 0:
            continue
        rows["input_ids"].append(sequence.input_ids)
        rows["labels"].append([token if trained else IGNORE_INDEX for token, trained in zip(sequence.input_ids, sequence.trained)])
    return datasets.Dataset.from_dict(rows)
