"""The self-contained ``report.html`` of an evaluation: one file, no external resources (CSS inline, the
loss curve embedded as a data URI), readable offline and attachable to a ticket.

It shows the metric table with deltas, the run's loss curves, latency and throughput, the judge's win
rate, and side-by-side examples in which each answer's differences from the expected answer are marked.
"""

from __future__ import annotations

import base64
import difflib
import html
from pathlib import Path
from typing import Any

from togi.evaluate.metrics import HIGHER_IS_BETTER

_STYLE = """
body { font-family: system-ui, "Hiragino Sans", "Noto Sans CJK JP", "Yu Gothic", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #1d2430; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #d8dee6; }
.meta { color: #5b6675; font-size: .9rem; }
table { border-collapse: collapse; width: 100%; margin-top: .6rem; font-size: .92rem; }
th, td { border: 1px solid #d8dee6; padding: .35rem .55rem; text-align: left; vertical-align: top; }
th { background: #f3f5f8; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
.better { color: #17803d; font-weight: 600; } .worse { color: #c0392b; font-weight: 600; }
mark { background: #ffe08a; padding: 0 1px; border-radius: 2px; }
.examples td { white-space: pre-wrap; word-break: break-word; width: 25%; }
.tag { display: inline-block; font-size: .75rem; padding: 0 .4rem; border-radius: .6rem; background: #e8edf3; margin-left: .3rem; }
.card { display: inline-block; border: 1px solid #d8dee6; border-radius: .5rem; padding: .6rem 1rem; margin: .3rem .6rem 0 0; }
.card b { font-size: 1.3rem; display: block; }
img { max-width: 100%; border: 1px solid #d8dee6; border-radius: .4rem; }
"""


def _marked(prediction: str, expected: str) -> str:
    """The prediction with every stretch that differs from the expected answer in <mark>."""
    parts = []
    matcher = difflib.SequenceMatcher(None, expected, prediction, autojunk=False)
    for operation, _, _, start, end in matcher.get_opcodes():
        piece = html.escape(prediction[start:end])
        if piece:
            parts.append(piece if operation == "equal" else f"<mark>{piece}</mark>")
    return "".join(parts) or "<i>(empty)</i>"


def _metric_rows(report: dict[str, Any]) -> str:
    rows = []
    for name, delta in report["deltas"].items():
        tuned, baseline = report["tuned"]["metrics"][name], report["baseline"]["metrics"][name]
        better = (delta > 0) == HIGHER_IS_BETTER.get(name, True)
        css = "" if delta == 0 else ("better" if better else "worse")
        arrow = "higher is better" if HIGHER_IS_BETTER.get(name, True) else "lower is better"
        rows.append(f"<tr><td>{html.escape(name)}<span class='tag'>{arrow}</span></td><td class='number'>{tuned:.4f}</td>"
                    f"<td class='number'>{baseline:.4f}</td><td class='number {css}'>{delta:+.4f}</td></tr>")
    return "\n".join(rows)


def _example_rows(tuned: list[dict[str, Any]], baseline: list[dict[str, Any]], limit: int) -> str:
    rows = []
    for t, b in list(zip(tuned, baseline))[:limit]:
        verdict = ""
        if t["rougeL"] != b["rougeL"]:
            verdict = "<span class='tag better'>tuned closer</span>" if t["rougeL"] > b["rougeL"] else "<span class='tag worse'>base closer</span>"
        rows.append(
            f"<tr><td>{html.escape(t['input'])}<br><span class='meta'>example {t['index']} · line {t['line']}</span></td>"
            f"<td>{html.escape(t['reference'])}</td><td>{_marked(b['prediction'], b['reference'])}</td>"
            f"<td>{_marked(t['prediction'], t['reference'])}{verdict}</td></tr>")
    return "\n".join(rows)


def render_html(report: dict[str, Any], tuned_records: list[dict[str, Any]], baseline_records: list[dict[str, Any]],
                loss_plot: Path | None = None, examples: int = 50) -> str:
    tuned, baseline = report["tuned"], report["baseline"]
    plot = ""
    if loss_plot is not None and loss_plot.is_file():
        encoded = base64.b64encode(loss_plot.read_bytes()).decode("ascii")
        plot = f"<h2>Training loss</h2><img alt='train and eval loss by step' src='data:image/png;base64,{encoded}'>"
    judge = ""
    if report.get("judge"):
        j = report["judge"]
        low, high = j["win_rate_ci95"]
        judge = (f"<h2>LLM judge</h2><p class='meta'>{html.escape(str(j['judge']))}; each pair judged in both orders, "
                 "a win only when the tuned answer wins in both.</p>"
                 f"<div class='card'>win rate<b>{j['win_rate']:.0%}</b>95% CI {low:.0%}–{high:.0%}</div>"
                 f"<div class='card'>wins<b>{j['wins']}</b></div><div class='card'>ties<b>{j['ties']}</b></div>"
                 f"<div class='card'>losses<b>{j['losses']}</b></div><div class='card'>unreadable<b>{j['invalid']}</b></div>")
    shown = min(examples, len(tuned_records))
    return f"""<!DOCTYPE html>
<html lang="ja"><head><meta charset="utf-8"><title>togi evaluation · {html.escape(Path(report['run_dir']).name)}</title>
<style>{_STYLE}</style></head><body>
<h1>togi evaluation: tuned vs {html.escape(baseline['name'])}</h1>
<p class="meta">run <code>{html.escape(report['run_dir'])}</code> · data <code>{html.escape(report['data'])}</code> ·
{report['n_examples']} examples · greedy decoding for both · BLEU tokenizer {html.escape(report['bleu_tokenizer'])}</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>tuned</th><th>{html.escape(baseline['name'])}</th><th>delta</th></tr>
{_metric_rows(report)}</table>
<h2>Speed</h2>
<div class="card">tuned latency<b>{tuned['latency_seconds']:.2f} s</b>{tuned['tokens_per_second']:.1f} tokens/s</div>
<div class="card">{html.escape(baseline['name'])} latency<b>{baseline['latency_seconds']:.2f} s</b>{baseline['tokens_per_second']:.1f} tokens/s</div>
<p class="meta">Latency is the wall time until an answer came back; prompts are answered in batches.</p>
{judge}
{plot}
<h2>Examples ({shown} of {len(tuned_records)})</h2>
<p class="meta"><mark>marked</mark> text differs from the expected answer.</p>
<table class="examples"><tr><th>input</th><th>expected</th><th>{html.escape(baseline['name'])}</th><th>tuned</th></tr>
{_example_rows(tuned_records, baseline_records, examples)}</table>
</body></html>
"""
