"""``togi eval``: the tuned model against a baseline on a test set, with a deploy gate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from togi.cli.chat_clients import JUDGE_KEY_VARIABLES, chat_client_from_flags
from togi.cli.common import fail, quiet_libraries
from togi.cli.terminal import make_console

console = make_console()


def _parse_floors(values: list[str]) -> dict[str, float]:
    floors = {}
    for value in values:
        name, _, number = value.partition("=")
        try:
            floors[name.strip()] = float(number)
        except ValueError:
            raise fail(f"--fail-below {value!r} is not METRIC=VALUE", "e.g. --fail-below rougeL=0.4 --fail-below accuracy=0.8") from None
    return floors


def eval_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A training run directory.", show_default=False)],
    data: Annotated[Path, typer.Option(help="Test data file (chat examples; the last assistant message is the reference).")],
    baseline: Annotated[str, typer.Option(help="'base' (the model before tuning) or another run directory.")] = "base",
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts answered together.")] = 8,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help="Answer length limit (default: 1.5x the longest reference).")] = None,
    limit: Annotated[Optional[int], typer.Option("-n", min=1, help="Evaluate only the first N examples.")] = None,
    label_pattern: Annotated[Optional[str], typer.Option(help="Regex whose first group is the label, for accuracy and macro-F1.")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Comma-separated labels to look for, for accuracy and macro-F1.")] = None,
    fail_below: Annotated[Optional[list[str]], typer.Option(help="Deploy gate: METRIC=VALUE the tuned model must reach (repeatable).")] = None,
    must_beat_baseline: Annotated[bool, typer.Option("--must-beat-baseline", help="Deploy gate: no metric may be worse than the baseline's.")] = False,
    judge_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint of an LLM judge, e.g. http://127.0.0.1:8000/v1 (key: $TOGI_JUDGE_API_KEY or $OPENAI_API_KEY).")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="The judge's model name at --judge-url, or without it a local model: a run directory, a model directory, a .gguf file or the embedded name.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Directory for report.json and records.jsonl (default: RUN_DIR/eval).")] = None,
) -> None:
    """Evaluate a tuned model against its base (or another run) with the same greedy decoding."""
    from togi.evaluate.metrics import HIGHER_IS_BETTER
    from togi.evaluate.runner import EvalOptions, evaluate_run, gate_failures, write_report

    quiet_libraries()
    floors = _parse_floors(fail_below or [])
    judge, judge_name = chat_client_from_flags(judge_url, judge_model, role="the judge", flags=("--judge-url", "--judge-model"),
                                               key_variables=JUDGE_KEY_VARIABLES)
    options = EvalOptions(data=data, baseline=baseline, batch_size=batch_size, max_new_tokens=max_new_tokens, limit=limit,
                          label_pattern=label_pattern, labels=tuple(label.strip() for label in labels.split(",")) if labels else (),
                          judge=judge, judge_name=judge_name)
    with console.status("generating answers with the tuned model and the baseline ..."):
        report = evaluate_run(run_dir, options)
    path = write_report(report, out or run_dir / "eval")
    table = Table(title=f"{report.n_examples} examples from {report.data}", title_justify="left")
    for column in ("metric", "tuned", report.baseline.name, "delta"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for name, delta in report.deltas().items():
        better = (delta > 0) == HIGHER_IS_BETTER[name] and delta != 0
        style = "green" if better else ("red" if delta != 0 else "")
        table.add_row(name, f"{report.tuned.metrics[name]:.4f}", f"{report.baseline.metrics[name]:.4f}", Text(f"{delta:+.4f}", style=style))
    table.add_row("latency (s)", f"{report.tuned.latency_seconds:.2f}", f"{report.baseline.latency_seconds:.2f}", "")
    table.add_row("tokens/s", f"{report.tuned.tokens_per_second:.1f}", f"{report.baseline.tokens_per_second:.1f}", "")
    console.print(table)
    console.print(Text(report.summary(), style="bold"), soft_wrap=True)
    if report.judge:
        judged = report.judge
        console.print(f"judge ({judged['judge']}, both orders): {judged['wins']} wins, {judged['ties']} ties, {judged['losses']} losses, "
                      f"{judged['invalid']} unreadable; win rate {judged['win_rate']:.0%} (95% CI {judged['win_rate_ci95'][0]:.0%}–"
                      f"{judged['win_rate_ci95'][1]:.0%})", soft_wrap=True, highlight=False)
    console.print(f"report: {path.parent / 'report.html'} and {path.name}  (per-example records: {path.parent / 'records.jsonl'}; "
                  f"BLEU tokenizer: {report.bleu_tokenizer})", soft_wrap=True, highlight=False)
    failures = gate_failures(report, floors, must_beat_baseline)
    if failures:
        for failure in failures:
            console.print(Text.assemble(("gate failed:", "bold red"), f" {failure}"), soft_wrap=True)
        raise typer.Exit(1)


def review_command(
    source: Annotated[Path, typer.Argument(metavar="RUN_DIR|RECORDS", help="A run directory evaluated with `togi eval`, or its records.jsonl.", show_default=False)],
    scores: Annotated[Optional[Path], typer.Option(help="CSV the scores are appended to (default: eval/review.csv next to the records).")] = None,
    model: Annotated[str, typer.Option(help="Whose answers to review: tuned, or the baseline's name (base).")] = "tuned",
) -> None:
    """Score answers by hand, 0-5 for accuracy, relevance and expertise. Each score is saved at once; run
    it again to continue. Answers come from standard input, so it can be piped."""
    from togi.evaluate.review import CRITERIA, load_review_items, means, run_review

    items = load_review_items(source, model)
    csv_path = scores or (source / "eval" if source.is_dir() else source.parent) / "review.csv"

    def show(item: Any, position: int, total: int) -> None:
        console.rule(f"{position}/{total} · example {item.index} (line {item.line})")
        console.print(Text("question: ", style="bold") + Text(item.question), soft_wrap=True)
        console.print(Text("expected: ", style="bold") + Text(item.expected), soft_wrap=True)
        console.print(Text("answer:   ", style="bold green") + Text(item.answer), soft_wrap=True)

    try:
        given, complete = run_review(items, csv_path, stdin=sys.stdin, show=show, say=lambda text: console.print(text, end=""))
    except KeyboardInterrupt:
        console.print(f"\nstopped; every score given so far is in {csv_path}. Run the same command to continue.", soft_wrap=True)
        raise typer.Exit(130) from None
    console.print()
    table = Table(title=f"mean scores ({csv_path})", title_justify="left")
    for criterion in CRITERIA:
        table.add_column(criterion, justify="right")
    averages = means(csv_path)
    table.add_row(*(f"{averages[c]:.2f}" if c in averages else "-" for c in CRITERIA))
    console.print(table)
    if not complete:
        console.print(f"input ended after {given} new scores; run the same command to continue.", soft_wrap=True)


def adapters_command(
    folder: Annotated[Path, typer.Argument(metavar="FOLDER", help="A folder of togi export --to multi-adapter.", show_default=False)],
    test: Annotated[list[str], typer.Option(help="A task's test file, NAME=FILE (repeatable): every adapter answers every file.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Prompts answered together.")] = 8,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help="Answer length limit (default: 1.5x the longest reference).")] = None,
    limit: Annotated[Optional[int], typer.Option("-n", min=1, help="Evaluate only the first N examples of each file.")] = None,
    label_pattern: Annotated[Optional[str], typer.Option(help="Regex whose first group is the label, for accuracy and macro-F1.")] = None,
) -> None:
    """Score the base and each adapter of a multi-adapter export (a combination too) on each task's test file."""
    from togi.evaluate.adapters import evaluate_adapters, write_adapter_scores
    from togi.evaluate.runner import EvalOptions

    tests = {}
    for entry in test:
        name, separator, path = entry.partition("=")
        if not separator or not name or not path:
            raise fail(f"--test {entry!r} is not NAME=FILE", "for example --test reviews=runs/demo-data/reviews.test.jsonl")
        if not Path(path).is_file():
            raise fail(f"--test {name}: no file {path}", "give each task's test file (chat examples)")
        tests[name] = Path(path)
    quiet_libraries()
    options = EvalOptions(data=next(iter(tests.values())), batch_size=batch_size, max_new_tokens=max_new_tokens, limit=limit,
                          label_pattern=label_pattern)
    with console.status("answering each test file with the base and each adapter ..."):
        rows = evaluate_adapters(folder, tests, options)
    metric_names = [name for name in ("accuracy", "macro_f1", "exact_match", "rougeL", "mean_token_loss") if name in rows[0].metrics]
    table = Table(title=f"{folder}: each model on each task's test file", title_justify="left")
    for column in ("task", "model", *metric_names):
        table.add_column(column, justify="left" if column in ("task", "model") else "right")
    for task in tests:
        for row in (row for row in rows if row.task == task):
            table.add_row(task, row.model, *(f"{row.metrics[name]:.4f}" if name in row.metrics else "—" for name in metric_names))
    console.print(table)
    path = write_adapter_scores(rows, folder / "eval")
    console.print(Text(f"scores: {path}"), soft_wrap=True)


class _EvalGroup(TyperGroup):
    """`togi eval RUN_DIR ...` evaluates; `togi eval review ...` starts the human review; `togi eval adapters ...` scores a
    multi-adapter export."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(cls=_EvalGroup, no_args_is_help=True,
                       help="Evaluate a tuned model against its base: `togi eval RUN_DIR --data test.jsonl`, or `togi eval review RUN_DIR`.")
eval_app.command("run")(eval_command)
eval_app.command("review")(review_command)
eval_app.command("adapters")(adapters_command)
