"""``togi data ...``: check, stats, show, convert and split data files (prefs and augment: cli/data_generation.py), and
the options and helpers the data commands share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from togi.cli import render
from togi.cli.common import EXIT_FINDINGS, errors, fail
from togi.cli.terminal import make_console, print_json, styled
from togi.data.examples import Dataset
from togi.data.findings import Finding, Severity, has_errors
from togi.data.formats import FORMATS, LoadOptions, load_dataset
from togi.data.labels import compile_label_pattern, label_of
from togi.data.reader import container_of
from togi.data.split import SPLIT_NAMES, split_indices
from togi.data.stats import DEFAULT_EPOCHS, DEFAULT_MAX_LENGTH, DEFAULT_PRICE_PER_MILLION, compute_stats
from togi.data.template import tokenize_example
from togi.data.validate import CheckOptions, check_dataset
from togi.data.writer import NotConvertible, check_target, default_target, example_to_record, write_records
from togi.models.embedded import EMBEDDED_MODEL_NAME
from togi.models.resolve import ModelNotFound, load_tokenizer
from togi.runs import refuse_run_as_model

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

app = typer.Typer(help="Prepare and check training data: check, stats, show, convert, split, prefs, augment.", no_args_is_help=True)
console = make_console()

FileArgument = Annotated[Path, typer.Argument(metavar="FILE", help="Data file: .jsonl, .json, .csv or .tsv.", show_default=False)]
FormatOption = Annotated[Optional[str], typer.Option("--format", help=f"Input format, instead of detecting it: {', '.join(FORMATS)}.")]
EncodingOption = Annotated[str, typer.Option(help="Text encoding of the file, e.g. cp932 for Shift_JIS.")]
InputColumnOption = Annotated[str, typer.Option(help="CSV/TSV column with the user's text.")]
OutputColumnOption = Annotated[str, typer.Option(help="CSV/TSV column with the expected answer.")]
SystemOption = Annotated[Optional[str], typer.Option(help="System prompt added to examples that have none.")]
ModelOption = Annotated[Optional[str], typer.Option(help=f"Model whose tokenizer and chat template count tokens (default: {EMBEDDED_MODEL_NAME}).")]
MaxLengthOption = Annotated[int, typer.Option(min=1, help="Maximum tokens per example in training.")]
LabelPatternOption = Annotated[Optional[str], typer.Option(help="Regex extracting a label from each final answer (first group), e.g. 'ラベル: (\\S+)'.")]
EpochsOption = Annotated[int, typer.Option(min=1, help="Epochs for the training-token and cost estimate.")]
PriceOption = Annotated[float, typer.Option(min=0.0, help="Price in USD per 1M training tokens.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]


def _load(file: Path, format: str | None, encoding: str, input_column: str, output_column: str, system: str | None) -> Dataset:
    if format is not None and format not in FORMATS:
        raise fail(f"unknown --format {format!r}", f"choose one of: {', '.join(FORMATS)}")
    return load_dataset(file, LoadOptions(format=format, encoding=encoding, input_column=input_column,
                                          output_column=output_column, system=system))


def _tokenizer(model: str | None, required: bool) -> tuple[PreTrainedTokenizerBase | None, Finding | None]:
    """The tokenizer of ``model``; without an explicit model a missing embedded model is a note, not a failure."""
    refuse_run_as_model(model)
    try:
        with errors.status(f"loading the tokenizer of {model or EMBEDDED_MODEL_NAME} ..."):
            return load_tokenizer(model, log=lambda message: errors.print(message)), None
    except ModelNotFound as error:
        if required:
            raise
        return None, Finding(code="tokens_not_counted", severity=Severity.INFO, message=f"token counts skipped: {error.message}",
                             hint=error.hint, file="-")


@app.command()
def check(
    file: FileArgument,
    model: ModelOption = None,
    max_length: MaxLengthOption = DEFAULT_MAX_LENGTH,
    label_pattern: LabelPatternOption = None,
    epochs: EpochsOption = DEFAULT_EPOCHS,
    price_per_million: PriceOption = DEFAULT_PRICE_PER_MILLION,
    format: FormatOption = None,
    encoding: EncodingOption = "utf-8",
    input_column: InputColumnOption = "question",
    output_column: OutputColumnOption = "answer",
    system: SystemOption = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too.")] = False,
    show_all: Annotated[bool, typer.Option("--all", help="Show every finding, not the first 10 of each kind.")] = False,
    json_output: JsonOption = False,
) -> None:
    """Validate a data file: every problem with its line, field and a hint, then the statistics.

    Exit code 0 when there are no errors, 1 when there are, 2 for a usage error."""
    dataset = _load(file, format, encoding, input_column, output_column, system)
    tokenizer, note = _tokenizer(model, required=model is not None)
    options = CheckOptions(max_length=max_length, label_pattern=compile_label_pattern(label_pattern), epochs=epochs,
                           price_per_million=price_per_million)
    report = check_dataset(dataset, tokenizer, options, tokenizer_name=model or EMBEDDED_MODEL_NAME)
    findings = report.findings + ([note] if note else [])
    failed = has_errors(findings) or (strict and any(f.severity is Severity.WARNING for f in findings))
    if json_output:
        print_json({
            "file": dataset.path, "format": dataset.format, "kind": dataset.kind.value, "ok": not failed,
            "summary": {severity.value: sum(f.severity is severity for f in findings) for severity in Severity},
            "findings": [finding.to_dict() for finding in findings],
            "stats": report.stats.to_dict(),
        })
    else:
        render.render_findings(console, findings, per_code=None if show_all else 10)
        if findings:
            console.print()
        render.render_stats(console, dataset, report.stats)
        render.render_verdict(console, dataset, findings)
    raise typer.Exit(EXIT_FINDINGS if failed else 0)


@app.command()
def stats(
    file: FileArgument,
    model: ModelOption = None,
    max_length: MaxLengthOption = DEFAULT_MAX_LENGTH,
    label_pattern: LabelPatternOption = None,
    epochs: EpochsOption = DEFAULT_EPOCHS,
    price_per_million: PriceOption = DEFAULT_PRICE_PER_MILLION,
    format: FormatOption = None,
    encoding: EncodingOption = "utf-8",
    input_column: InputColumnOption = "question",
    output_column: OutputColumnOption = "answer",
    system: SystemOption = None,
    json_output: JsonOption = False,
) -> None:
    """Statistics of the valid examples: sizes in characters and real tokens, roles, labels, cost."""
    dataset = _load(file, format, encoding, input_column, output_column, system)
    tokenizer, note = _tokenizer(model, required=model is not None)
    findings: list[Finding] = []
    result = compute_stats(dataset, tokenizer, tokenizer_name=model or EMBEDDED_MODEL_NAME, max_length=max_length,
                           epochs=epochs, price_per_million=price_per_million,
                           label_pattern=compile_label_pattern(label_pattern), findings=findings)
    skipped = len(dataset.raw_records) - len(dataset.examples)
    if json_output:
        print_json({"file": dataset.path, "format": dataset.format, "kind": dataset.kind.value,
                     "invalid_records": skipped, **result.to_dict()})
        return
    if note:
        errors.print(f"note: {note.message}", soft_wrap=True)
    render.render_stats(console, dataset, result)
    if skipped or has_errors(dataset.findings + findings):
        console.print(styled((f"{skipped} records are invalid and not counted: run `togi data check {file}`", "yellow")), soft_wrap=True)


@app.command()
def show(
    file: FileArgument,
    model: ModelOption = None,
    n: Annotated[int, typer.Option("-n", min=1, help="How many examples to show.")] = 3,
    start: Annotated[int, typer.Option(min=0, help="Index of the first example to show (0-based).")] = 0,
    max_length: MaxLengthOption = DEFAULT_MAX_LENGTH,
    train_on_prompt: Annotated[bool, typer.Option(help="Show the mask used with --train-on-prompt (every token trained).")] = False,
    full: Annotated[bool, typer.Option(help="Print whole examples instead of their first and last characters.")] = False,
    format: FormatOption = None,
    encoding: EncodingOption = "utf-8",
    input_column: InputColumnOption = "question",
    output_column: OutputColumnOption = "answer",
    system: SystemOption = None,
    json_output: JsonOption = False,
) -> None:
    """Render examples through the model's chat template and show which tokens are trained on."""
    dataset = _load(file, format, encoding, input_column, output_column, system)
    tokenizer, _ = _tokenizer(model, required=True)
    assert tokenizer is not None
    chosen = dataset.examples[start : start + n]
    shown = [(example, tokenize_example(tokenizer, example, train_on_prompt=train_on_prompt, max_length=max_length))
             for example in chosen]
    if json_output:
        special_ids = set(tokenizer.all_special_ids)
        print_json({"file": dataset.path, "examples": [
            {"line": example.source.line, "index": example.source.index, "sequences": [
                {"text": sequence.text, "n_tokens": sequence.length_before_truncation, "n_trained": sequence.n_trained,
                 "tokens": [{"id": token_id, "token": token, "span": [a, b], "trained": trained, "special": token_id in special_ids}
                            for token_id, token, (a, b), trained in zip(sequence.input_ids, tokenizer.convert_ids_to_tokens(sequence.input_ids),
                                                                        sequence.offsets, sequence.trained)]}
                for sequence in sequences]}
            for example, sequences in shown]})
        return
    if not shown:
        raise fail(f"no valid example at index {start} ({len(dataset.examples)} valid examples)", f"run `togi data check {file}`")
    for example, sequences in shown:
        names = ["chosen", "rejected"] if len(sequences) == 2 else [""]
        for name, sequence in zip(names, sequences):
            title = f"example {example.source.index} · line {example.source.line}" + (f" · {name}" if name else "")
            render.render_tokenized(console, tokenizer, sequence, title=title, full=full)


@app.command()
def convert(
    source: Annotated[Path, typer.Argument(metavar="IN", help="Input data file.", show_default=False)],
    target: Annotated[Path, typer.Argument(metavar="OUT", help="Output file; its extension picks the container (.jsonl, .json, .csv, .tsv).", show_default=False)],
    to: Annotated[Optional[str], typer.Option(help="Output format (default: chat for chat data (pairs for .csv/.tsv); the kind's own otherwise).")] = None,
    format: FormatOption = None,
    encoding: EncodingOption = "utf-8",
    input_column: InputColumnOption = "question",
    output_column: OutputColumnOption = "answer",
    system: SystemOption = None,
) -> None:
    """Convert a data file into another format (OpenAI chat JSONL by default), atomically."""
    if target.resolve() == source.resolve():
        raise fail("the output is the input file", "write to a new file, then rename it if you want")
    container = container_of(target)
    dataset = _load(source, format, encoding, input_column, output_column, system)
    if has_errors(dataset.findings):
        refuse(dataset, "convert")
    target_format = to or default_target(dataset.kind, container)
    check_target(dataset.kind, target_format, container)
    records, problems = [], []
    for example in dataset.examples:
        try:
            records.append(example_to_record(example, target_format, container))
        except NotConvertible as error:
            problems.append(Finding(code="not_convertible", severity=Severity.ERROR, message=str(error),
                                    hint=error.hint, file=dataset.path,
                                    line=example.source.line, example=example.source.index))
    if problems:
        render.render_findings(errors, problems)
        raise fail(f"{len(problems)} examples cannot be written as {target_format}; nothing was written", "choose another --to",
                   EXIT_FINDINGS)
    write_records(target, records, container)
    console.print(f"wrote {len(records)} examples to {target} ({target_format}, {container})", soft_wrap=True)


@app.command()
def split(
    file: FileArgument,
    val_ratio: Annotated[float, typer.Option(help="Share of examples for validation.")] = 0.1,
    test_ratio: Annotated[float, typer.Option(help="Share of examples for a held-out test set.")] = 0.0,
    stratify: Annotated[Optional[str], typer.Option(help="Keep class proportions: 'label', or a top-level field of the records.")] = None,
    label_pattern: LabelPatternOption = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same split.")] = 42,
    out_dir: Annotated[Optional[Path], typer.Option(help="Directory for the split files (default: next to the input).")] = None,
    format: FormatOption = None,
    encoding: EncodingOption = "utf-8",
    input_column: InputColumnOption = "question",
    output_column: OutputColumnOption = "answer",
) -> None:
    """Split a data file into train / val / test files in the same format, deterministically."""
    dataset = _load(file, format, encoding, input_column, output_column, None)
    if has_errors(dataset.findings):
        refuse(dataset, "split")
    labels = None if stratify is None else _stratify_labels(dataset, stratify, compile_label_pattern(label_pattern))
    parts = split_indices(len(dataset.examples), val_ratio, test_ratio, labels=labels, seed=seed).parts()
    directory = out_dir or file.parent
    written = []
    for name in SPLIT_NAMES:
        if not parts[name] and name != "train":
            continue
        path = directory / f"{file.stem}.{name}{file.suffix}"
        records = [dataset.raw_records[dataset.examples[i].source.index] for i in parts[name]]
        write_records(path, records, dataset.container)
        written.append((name, path, parts[name]))
    table = Table(title=f"split of {file} (seed {seed})", title_justify="left")
    for column in ("split", "file", "examples"):
        table.add_column(column, overflow="fold")
    if labels is not None:
        table.add_column("labels", overflow="fold")
    for name, path, indices in written:
        row = [name, str(path), str(len(indices))]
        if labels is not None:
            counts: dict[str, int] = {}
            for i in indices:
                counts[labels[i]] = counts.get(labels[i], 0) + 1
            row.append(", ".join(f"{label} {counts[label]}" for label in sorted(counts)))
        table.add_row(*row)
    console.print(table)


def refuse(dataset: Dataset, action: str) -> None:
    render.render_findings(errors, [f for f in dataset.findings if f.severity is Severity.ERROR])
    raise fail(f"{dataset.path} has errors; nothing was written", f"fix them first (`togi data check {dataset.path}`), then {action} again",
               EXIT_FINDINGS)


def _stratify_labels(dataset: Dataset, key: str, pattern) -> list[str]:
    labels = []
    for example in dataset.examples:
        if key == "label":
            label = label_of(example, pattern)
        else:
            raw = dataset.raw_records[example.source.index]
            label = None if not isinstance(raw, dict) or raw.get(key) is None else str(raw[key])
        if label is None:
            hint = ("chat examples carry no label field: pass --label-pattern to read it from the answers"
                    if key == "label" and pattern is None else "give every example a value, or stratify by another field")
            raise fail(f"line {example.source.line}: no {key!r} to stratify by", hint)
        labels.append(label)
    return labels
