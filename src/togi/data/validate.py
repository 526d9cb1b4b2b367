"""``togi data check``: every finding for a data file, plus its statistics.

Reading and conversion (``reader.py``, ``formats.py``) report problems in single records; this module
adds the checks that need the whole data set or the model: size, length in real tokens, short
inputs and outputs, system-prompt consistency, label balance and duplicates. Thresholds follow
OpenAI's rules and the seeds: fewer than 10 examples is an error and fewer than 50 a warning; an input
under 10 characters or an output under 5 is suspicious; the largest class over 5x the smallest is
imbalanced, and classification data with a single label cannot train a classifier at all.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from togi.data.examples import ClassificationExample, Dataset, Example, ExampleKind
from togi.data.findings import Finding, Severity, has_errors, sort_findings
from togi.data.labels import has_own_labels, label_of
from togi.data.quality import find_duplicates
from togi.data.stats import DEFAULT_EPOCHS, DEFAULT_MAX_LENGTH, DEFAULT_PRICE_PER_MILLION, DatasetStats, compute_stats

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class CheckOptions:
    max_length: int = DEFAULT_MAX_LENGTH
    min_examples: int = 10  # fewer is an error (OpenAI refuses such a file)
    recommended_examples: int = 50  # fewer is a warning
    min_input_chars: int = 10
    min_output_chars: int = 5
    max_label_ratio: float = 5.0
    near_duplicate_threshold: float = 0.8
    label_pattern: re.Pattern[str] | None = None
    epochs: int = DEFAULT_EPOCHS
    price_per_million: float = DEFAULT_PRICE_PER_MILLION


@dataclass
class CheckReport:
    dataset: Dataset
    findings: list[Finding]
    stats: DatasetStats

    @property
    def ok(self) -> bool:
        return not has_errors(self.findings)


def check_dataset(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase | None = None,
    options: CheckOptions = CheckOptions(),
    *,
    tokenizer_name: str | None = None,
) -> CheckReport:
    findings = list(dataset.findings)
    stats = compute_stats(
        dataset, tokenizer, tokenizer_name=tokenizer_name, max_length=options.max_length, epochs=options.epochs,
        price_per_million=options.price_per_million, label_pattern=options.label_pattern, findings=findings,
    )
    findings += _size_findings(dataset, options)
    findings += _length_findings(dataset, stats, options)
    findings += _short_text_findings(dataset, options)
    findings += _system_prompt_findings(dataset)
    findings += _label_findings(dataset, options)
    if tokenizer is not None:
        findings += _special_token_findings(dataset, tokenizer)
    findings += find_duplicates(dataset, options.near_duplicate_threshold)
    return CheckReport(dataset=dataset, findings=sort_findings(findings), stats=stats)


def _file_finding(dataset: Dataset, code: str, severity: Severity, message: str, hint: str) -> Finding:
    return Finding(code=code, severity=severity, message=message, hint=hint, file=dataset.path)


def _example_finding(example: Example, code: str, severity: Severity, message: str, hint: str, field: str | None = None) -> Finding:
    return Finding(code=code, severity=severity, message=message, hint=hint, file=example.source.file,
                   line=example.source.line, example=example.source.index, field=field)


def _size_findings(dataset: Dataset, options: CheckOptions) -> list[Finding]:
    count = len(dataset.examples)
    if count < options.min_examples:
        return [_file_finding(dataset, "too_few_examples", Severity.ERROR,
                              f"{count} valid examples; at least {options.min_examples} are needed",
                              f"add examples: {options.recommended_examples}-100 good ones is a sound start")]
    if count < options.recommended_examples:
        return [_file_finding(dataset, "too_few_examples", Severity.WARNING,
                              f"only {count} examples; {options.recommended_examples} or more are recommended",
                              "add examples covering the cases you care about; quality matters more than quantity")]
    return []


def _length_findings(dataset: Dataset, stats: DatasetStats, options: CheckOptions) -> list[Finding]:
    by_index = {example.source.index: example for example in dataset.examples}
    return [
        _example_finding(by_index[record.index], "too_long", Severity.WARNING,
                         f"{record.tokens} tokens, over the maximum length of {options.max_length}; the end will be cut off",
                         "shorten the example, split the conversation, or raise --max-length")
        for record in stats.per_example
        if record.tokens > options.max_length
    ]


def _short_text_findings(dataset: Dataset, options: CheckOptions) -> list[Finding]:
    findings = []
    for example in dataset.examples:
        input_length = len(example.input_text.strip())
        if input_length < options.min_input_chars:
            findings.append(_example_finding(example, "short_input", Severity.WARNING,
                                             f"the input has only {input_length} characters (under {options.min_input_chars})",
                                             "give the model enough context to answer from"))
        if isinstance(example, ClassificationExample):
            continue
        outputs = [example.output_text] + ([m.content for m in example.rejected] if dataset.kind is ExampleKind.PREFERENCE else [])  # type: ignore[union-attr]
        shortest = min(len(text.strip()) for text in outputs)
        if shortest < options.min_output_chars:
            findings.append(_example_finding(example, "short_output", Severity.WARNING,
                                             f"an answer has only {shortest} characters (under {options.min_output_chars})",
                                             "write the full answer you want the model to give"))
    return findings


def _system_prompt_findings(dataset: Dataset) -> list[Finding]:
    if dataset.kind is ExampleKind.CLASSIFICATION or not dataset.examples:
        return []
    prompts = Counter(example.system_prompt for example in dataset.examples)
    if len(prompts) < 2:
        return []
    usual, usual_count = prompts.most_common(1)[0]
    described = "no system prompt" if usual is None else "the same system prompt"
    findings = []
    for example in dataset.examples:
        if example.system_prompt == usual:
            continue
        what = "has no system prompt" if example.system_prompt is None else "has a different system prompt"
        findings.append(_example_finding(
            example, "inconsistent_system_prompt", Severity.WARNING,
            f"{what}; {usual_count} of {len(dataset.examples)} examples have {described}",
            "use one system prompt everywhere (the model learns it as part of the task), or pass --system to add it",
        ))
    return findings


def _label_findings(dataset: Dataset, options: CheckOptions) -> list[Finding]:
    labelled = dataset.examples and (has_own_labels(dataset.examples[0]) or options.label_pattern is not None)
    if not labelled:
        return []
    findings = []
    counts: Counter[str] = Counter()
    for example in dataset.examples:
        label = label_of(example, options.label_pattern)
        if label is None:
            findings.append(_example_finding(example, "label_not_found", Severity.WARNING,
                                             "--label-pattern does not match the final answer",
                                             "fix the answer's format, or the pattern"))
        else:
            counts[label] += 1
    if len(counts) >= 2:
        (largest, most), (smallest, least) = counts.most_common()[0], counts.most_common()[-1]
        if most > options.max_label_ratio * least:
            findings.append(_file_finding(
                dataset, "label_imbalance", Severity.WARNING,
                f"label {largest!r} has {most} examples, {most / least:.1f}x the {least} of {smallest!r} (limit {options.max_label_ratio:g}x)",
                "add examples of the rare labels, or down-sample the common ones",
            ))
    elif len(counts) == 1 and dataset.kind is ExampleKind.CLASSIFICATION:
        findings.append(_file_finding(dataset, "single_label", Severity.ERROR, f"every example has the label {next(iter(counts))!r}",
                                      "a classifier needs at least two labels: add examples of another one"))
    return findings


def _special_token_findings(dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> list[Finding]:
    """Text that spells a control token (``<|im_end|>``) is read as that token and can end a turn early."""
    special = [token for token in getattr(tokenizer, "all_special_tokens", []) if len(token) > 1]
    findings = []
    for example in dataset.examples:
        text = example.input_text + "\n" + example.output_text
        found = [token for token in special if token in text]
        if found:
            findings.append(_example_finding(example, "special_token_in_content", Severity.WARNING,
                                             f"the text contains the model's control token {found[0]!r}",
                                             "remove or escape it: the tokenizer turns it into a real control token"))
    return findings
