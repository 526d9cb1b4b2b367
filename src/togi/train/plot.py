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
    _save(figure, plot_path)


def plot_study(study, rows, plot_path: Path, *, objective: str, direction: str) -> Path:
    """``togi tune``'s picture: the objective of each trial with the best so far (pruned trials at their last
    reported value), and beside it how much each parameter mattered (Optuna's fANOVA importance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (history, importance) = plt.subplots(1, 2, figsize=(11, 4), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    complete = [(row.number, row.value) for row in rows if row.state == "complete" and row.value is not None]
    pruned = [(row.number, row.value) for row in rows if row.state == "pruned" and row.value is not None]
    if complete:
        history.scatter(*zip(*complete), color="#1f77b4", label="trial", zorder=3)
        best, best_so_far = None, []
        for number, value in complete:
            best = value if best is None else (max(best, value) if direction == "maximize" else min(best, value))
            best_so_far.append((number, best))
        history.step(*zip(*best_so_far), where="post", color="#d62728", label="best so far")
    if pruned:
        history.scatter(*zip(*pruned), color="#7f7f7f", marker="x", label="pruned (its last evaluation)", zorder=3)
    from matplotlib.ticker import MaxNLocator

    history.xaxis.set_major_locator(MaxNLocator(integer=True))
    history.set_xlabel("trial")
    history.set_ylabel(objective.replace("_", " "))
    history.set_title(f"{objective.replace('_', ' ')} over trials ({'higher' if direction == 'maximize' else 'lower'} is better)")
    history.grid(alpha=0.3)
    history.legend(loc="best")
    try:
        from optuna.importance import get_param_importances

        importances = get_param_importances(study)
    except (ValueError, RuntimeError):  # fewer than two finished trials, or parameters that never varied
        importances = {}
    if importances:
        names = list(importances)[::-1]
        importance.barh(names, [importances[name] for name in names], color="#2ca02c")
        importance.set_xlim(0, 1)
        importance.set_title("parameter importance (fANOVA)")
    else:
        importance.axis("off")
        importance.text(0.5, 0.5, "parameter importance needs at least\ntwo finished trials that differ", ha="center", va="center")
    _save(figure, plot_path)
    return plot_path


def _save(figure, plot_path: Path) -> None:
    """Written whole or not at all: a reader never sees half a PNG. The temporary name is this process's own: processes
    sharing a study draw its plot at once."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    temporary = plot_path.with_name(f".{plot_path.name}.{os.getpid()}.tmp.png")
    figure.savefig(temporary)
    plt.close(figure)
    os.replace(temporary, plot_path)
