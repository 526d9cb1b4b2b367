"""Classification data: labelled texts, checked like any training data, split keeping the classes' shares.

Texts and labels come from ``{"text", "label"}`` rows (JSONL, JSON or CSV), or from chat data whose final
answers carry the label, read with ``classification.label_pattern`` (the text is then the user's
messages). Without a validation file, ``data.val_ratio`` of the training file is held out, stratified by
label. The class names, sorted, are the classifier's label ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from togi.config import TrainConfig
from togi.data.examples import ChatExample, ClassificationExample, Dataset, ExampleKind
from togi.data.findings import Finding, Severity
from togi.data.formats import LoadOptions, load_dataset
from togi.data.labels import label_of
from togi.data.split import split_indices
from togi.data.validate import CheckOptions, check_dataset
from togi.data.writer import example_to_record, write_records
from togi.train.data import TrainingDataError

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

# A small validation set may hold few examples, or one class only: those rules are for training data.
_TRAINING_ONLY_CODES = ("too_few_examples", "label_imbalance", "single_label")


@dataclass
class ClassificationData:
    train: list[ClassificationExample]
    val: list[ClassificationExample]
    labels: list[str]  # class names in label-id order
    warnings: list[Finding]


def load_classification_data(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> ClassificationData:
    train, warnings = _load_labelled(config.data.train_file, config, tokenizer)
    if config.data.val_file is not None:
        val, val_warnings = _load_labelled(config.data.val_file, config, tokenizer, validation=True)
        labels = sorted({example.label for example in train})
        unknown = [_unknown_label(example, labels) for example in val if example.label not in labels]
        if unknown:
            raise TrainingDataError(f"{config.data.val_file} has {len(unknown)} examples whose label never occurs in the training data",
                                    unknown, "give the validation examples only labels the training data has, or add training examples of those labels")
        return ClassificationData(train=train, val=val, labels=labels, warnings=warnings + val_warnings)
    labels = sorted({example.label for example in train})
    if config.data.val_ratio == 0 or len(train) < 10:
        return ClassificationData(train=train, val=[], labels=labels, warnings=warnings)
    split = split_indices(len(train), config.data.val_ratio, labels=[example.label for example in train], seed=config.training.seed)
    return ClassificationData(train=[train[i] for i in split.train], val=[train[i] for i in split.val], labels=labels, warnings=warnings)


def _load_labelled(path: Path, config: TrainConfig, tokenizer: PreTrainedTokenizerBase, *,
                   validation: bool = False) -> tuple[list[ClassificationExample], list[Finding]]:
    settings = config.data
    dataset = load_dataset(path, LoadOptions(format=settings.format, encoding=settings.encoding, input_column=settings.input_column,
                                             output_column=settings.output_column))
    pattern = config.classification.label_pattern
    if dataset.kind is ExampleKind.CHAT and pattern is not None:
        dataset = _labelled_from_answers(dataset, re.compile(pattern, re.MULTILINE))
    elif dataset.kind is not ExampleKind.CLASSIFICATION:
        raise TrainingDataError(
            f"{path} holds {dataset.kind.value} examples; task classification needs text and label: {{\"text\", \"label\"}} rows "
            "or a CSV with text,label columns" + (", or classification.label_pattern to read labels from the answers"
                                                  if dataset.kind is ExampleKind.CHAT else ""), [])
    findings = check_dataset(dataset, tokenizer, CheckOptions(max_length=settings.max_length)).findings
    if validation:
        findings = [finding for finding in findings if finding.code not in _TRAINING_ONLY_CODES]
    errors = [finding for finding in findings if finding.severity is Severity.ERROR]
    if errors:
        raise TrainingDataError(f"{path} has {len(errors)} errors; run `togi data check {path}` for the details", errors)
    examples = [example for example in dataset.examples if isinstance(example, ClassificationExample)]
    return examples, [finding for finding in findings if finding.severity is Severity.WARNING]


def _labelled_from_answers(dataset: Dataset, pattern: re.Pattern[str]) -> Dataset:
    """Chat examples as classification examples: the user's messages, labelled by the pattern's match in the answer."""
    examples, findings = [], list(dataset.findings)
    for example in dataset.examples:
        label = label_of(example, pattern) if isinstance(example, ChatExample) else None
        if not label:
            findings.append(Finding(code="label_not_found", severity=Severity.ERROR, file=dataset.path, line=example.source.line,
                                    example=example.source.index, field="messages",
                                    message=f"classification.label_pattern {pattern.pattern!r} does not match the final answer",
                                    hint="fix the answer's format or the pattern, or remove the example"))
            continue
        examples.append(ClassificationExample(text=example.input_text, label=label, source=example.source))
    return replace(dataset, format="classification", kind=ExampleKind.CLASSIFICATION, examples=examples, findings=findings)


def _unknown_label(example: ClassificationExample, labels: list[str]) -> Finding:
    return Finding(code="unknown_label", severity=Severity.ERROR, file=example.source.file, line=example.source.line,
                   example=example.source.index, field="label", message=f"label {example.label!r} does not occur in the training data",
                   hint=f"the training labels are: {', '.join(labels)}; fix the spelling or add training examples of it")


def save_split(examples: list[ClassificationExample], path: Path) -> None:
    """The exact examples a run trained or validated on, as {"text", "label"} JSONL."""
    write_records(path, [example_to_record(example, "classification") for example in examples], "jsonl")


def tokenize_labelled(examples: list[ClassificationExample], labels: list[str], tokenizer: PreTrainedTokenizerBase, *,
                      max_length: int) -> datasets.Dataset:
    """A ``datasets.Dataset`` of token ids (truncated to ``max_length``, unpadded) and label ids."""
    import datasets

    encoded = tokenizer([example.text for example in examples], truncation=True, max_length=max_length)
    label_ids = {label: index for index, label in enumerate(labels)}
    return datasets.Dataset.from_dict({**encoded, "labels": [label_ids[example.label] for example in examples]})
