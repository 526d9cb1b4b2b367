"""The loss-curve PNG of a run, drawn from its metrics JSONL: train and eval loss by step, and the task
metric of each evaluation (accuracy, macro-F1, exact match, ROUGE-L) on a second axis from 0 to 1."""

from __future__ import annotations

import os
from pathlib import Path

from togi.runs import read_metrics

TASK_METRICS = {"eval_accuracy": ("accuracy", "#2ca02c"), "eval_macro_f1": ("macro-F1", "#9467bd"),
                "eval_exact_match": ("exact match", "#8c564b"), "eval_rouge_l": ("ROUGE-L", "#ff7f0e")}


def plot_losses(metrics_path: Path, plot_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    evaluation = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        axes.plot(*zip(*train), label="train loss", color="#1f77b4", linewidth=1.2)
    if evaluation:
        axes.plot(*zip(*evaluation), label="eval loss", color="#d62728", marker="o", linewidth=1.5)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("togi training loss")
    axes.grid(alpha=0.3)
    handles, labels = axes.get_legend_handles_labels()
    task = {key: [(r["step"], r[key]) for r in records if key in r] for key in TASK_METRICS}
    if any(task.values()):
        scores = axes.twinx()
        for key, points in task.items():
            if points:
                name, color = TASK_METRICS[key]
                scores.plot(*zip(*points), label=f"eval {name}", color=color, marker="s", linewidth=1.5, linestyle="--")
        scores.set_ylim(0, 1)
        scores.set_ylabel("task metric")
        more_handles, more_labels = scores.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    if handles:
        axes.legend(handles, labels, loc="best")
    figure.tight_layout()
    temporary = plot_path.with_name(f".{plot_path.name}.tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, plot_path)
