"""Rendering library results for the terminal with rich. No logic of its own beyond presentation."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich.text import Text

from togi.data.examples import Dataset
from togi.data.findings import Finding, Severity, count_by_severity
from togi.data.stats import DatasetStats, Summary
from togi.data.template import TokenizedChat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SEVERITY_STYLES = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}


def render_findings(console: Console, findings: list[Finding], per_code: int | None = 10) -> None:
    """Findings in file order, at most ``per_code`` of each code (None: all)."""
    shown: Counter[str] = Counter()
    hidden: dict[str, int] = defaultdict(int)
    for finding in findings:
        if per_code is not None and shown[finding.code] >= per_code:
            hidden[finding.code] += 1
            continue
        shown[finding.code] += 1
        line = Text()
        line.append(finding.location, style="bold")
        line.append(": ")
        line.append(f"{finding.severity.value}[{finding.code}]", style=SEVERITY_STYLES[finding.severity])
        line.append(f" {finding.message}")
        console.print(line, soft_wrap=True)
        console.print(Text(f"    hint: {finding.hint}", style="dim"), soft_wrap=True)
    for code, count in hidden.items():
        console.print(Text(f"... and {count} more {code} (use --all or --json to see every finding)", style="dim"), soft_wrap=True)


def render_verdict(console: Console, dataset: Dataset, findings: list[Finding]) -> None:
    counts = count_by_severity(findings)
    summary = f"{counts['error']} errors, {counts['warning']} warnings, {counts['info']} notes"
    described = f"{len(dataset.examples)} valid {dataset.kind.value} examples ({dataset.format} format)"
    if counts["error"]:
        console.print(Text(f"✗ {dataset.path}: {summary}; {described}. Fix the errors before training.", style="bold red"), soft_wrap=True)
    else:
        console.print(Text(f"✓ {dataset.path}: {summary}; {described}.", style="bold green"), soft_wrap=True)


def _summary_cells(summary: Summary | None) -> str:
    if summary is None:
        return "-"
    return f"min {summary.min:g} · mean {summary.mean:g} · p50 {summary.p50:g} · p95 {summary.p95:g} · max {summary.max:g}"


def render_stats(console: Console, dataset: Dataset, stats: DatasetStats) -> None:
    table = Table(title=f"{dataset.path}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("format", f"{dataset.format} ({dataset.kind.value}, {dataset.container})")
    table.add_row("examples", str(stats.n_examples))
    table.add_row("characters / example", _summary_cells(stats.characters))
    if stats.role_counts:
        table.add_row("messages by role", ", ".join(f"{role} {count}" for role, count in stats.role_counts.items()))
    if stats.label_counts:
        total = sum(stats.label_counts.values())
        table.add_row("labels", ", ".join(f"{label} {count} ({count / total:.0%})" for label, count in stats.label_counts.items()))
    if stats.tokenizer is None:
        table.add_row("tokens", "not counted (no tokenizer)")
    else:
        table.add_row("tokenizer", stats.tokenizer)
        table.add_row("tokens / example", _summary_cells(stats.tokens))
        table.add_row(f"over max length {stats.max_length}", str(stats.n_over_max_length))
        billed = stats.tokens_per_epoch or 1
        table.add_row("trained / prompt tokens",
                      f"{stats.trained_tokens:,} trained ({stats.trained_tokens / billed:.0%}) · {stats.prompt_tokens:,} prompt")
        table.add_row("tokens per epoch", f"{stats.tokens_per_epoch:,}")
        table.add_row(f"training tokens × {stats.epochs} epochs", f"{stats.training_tokens:,}")
        table.add_row("estimated cost", f"${stats.estimated_cost:,.2f} at ${stats.price_per_million:g} per 1M training tokens")
    console.print(table)


def _visible(text: str) -> str:
    return text.replace("\n", "↵\n")


def render_tokenized(
    console: Console,
    tokenizer: PreTrainedTokenizerBase,
    sequence: TokenizedChat,
    *,
    title: str,
    full: bool = False,
    edge_chars: int = 300,
) -> None:
    """The rendered text coloured by the loss mask, with special tokens marked, plus counts."""
    special_ids = set(getattr(tokenizer, "all_special_ids", []))
    trained_chars = [False] * len(sequence.text)
    special_chars = [False] * len(sequence.text)
    specials: Counter[str] = Counter()
    for token_id, (start, end), trained in zip(sequence.input_ids, sequence.offsets, sequence.trained):
        if token_id in special_ids:
            specials[sequence.text[start:end]] += 1
        for position in range(start, end):
            trained_chars[position] |= trained
            special_chars[position] |= token_id in special_ids
    visible_end = sequence.offsets[-1][1] if sequence.offsets else 0
    def style_at(position: int) -> str:
        return ("bold green" if trained_chars[position] else "dim") + (" magenta" if special_chars[position] else "")

    text = Text()
    run_start = 0
    for position in range(1, visible_end + 1):  # one styled run per stretch of equal style
        if position == visible_end or style_at(position) != style_at(run_start):
            text.append(_visible(sequence.text[run_start:position]), style=style_at(run_start))
            run_start = position
    if sequence.truncated:
        text.append(f"\n[cut off at max length: {sequence.length_before_truncation - sequence.n_tokens} more tokens]", style="red")
    if not full and len(text) > 3 * edge_chars:
        head, tail = text[:edge_chars], text[len(text) - edge_chars :]
        text = Text.assemble(head, Text(f"\n  … {len(text) - 2 * edge_chars} characters …\n", style="italic"), tail)
    console.rule(title)
    console.print(text, soft_wrap=True)
    console.print(
        f"tokens: {sequence.length_before_truncation} ({sequence.n_trained} trained, "
        f"{sequence.n_tokens - sequence.n_trained} not trained"
        + (f", {sequence.length_before_truncation - sequence.n_tokens} cut off" if sequence.truncated else "") + ")",
        soft_wrap=True, highlight=False,
    )
    console.print("special tokens: " + (", ".join(f"{token!r} ×{count}" for token, count in specials.items()) or "none"), soft_wrap=True, highlight=False)
    console.print(f"first characters: {sequence.text[:60]!r}", soft_wrap=True, highlight=False)
    console.print(f"last characters:  {sequence.text[-60:]!r}", soft_wrap=True, highlight=False)
    console.print(Text("legend: ", style="dim") + Text("trained on", style="bold green") + Text(" · ") +
                  Text("context only", style="dim") + Text(" · ") + Text("special token", style="magenta"))
