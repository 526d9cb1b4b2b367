"""Plot what each recipe of the reviews task reached for the training time it took (benchmarks/QUALITY.md).

    .venv/bin/python benchmarks/quality_curve.py            # writes benchmarks/quality_curve.png

Reads `benchmarks/data/quality_results.jsonl`: one line per measured variant of `benchmarks/quality.py`, with
its test-split accuracy, its training seconds on this 2-core CPU, whether another run shared the cores (its
seconds are then about twice what a quiet machine takes) and, where the run's `metrics.jsonl` was kept, its
validation accuracy at each evaluation against the seconds since its first step. New rows come from
`runs/quality/results.jsonl` after a `benchmarks/quality.py` run; they are copied here by hand when they go
into QUALITY.md, so the figure shows exactly the rows the document reports.

Left panel: test accuracy against training seconds, every variant one point (hollow: shared cores), with the
issue's bar (0.75) and the demo's training budget (6 minutes). Right panel: validation accuracy during
training for the runs whose curve is recorded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
BAR = 0.75
BUDGET_SECONDS = 360
CHANCE = 1 / 3


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot(rows: list[dict], target: Path) -> None:
    figure, (by_time, during) = plt.subplots(1, 2, figsize=(13, 5.5))
    for axis in (by_time, during):
        axis.axhline(BAR, color="tab:green", linestyle="--", linewidth=1, label="the bar (0.75)")
        axis.axhline(CHANCE, color="grey", linestyle=":", linewidth=1, label="chance (1/3)")
        axis.axvline(BUDGET_SECONDS, color="tab:red", linestyle="--", linewidth=1, label="demo's training budget (6 min)")
        axis.set_xscale("log")
        axis.set_ylim(0, 1)
        axis.set_xlabel("training seconds on 2 CPU cores (log)")
        axis.grid(alpha=0.3)
    colours = {"chat": "tab:blue", "classification": "tab:orange"}
    for kind, colour in colours.items():
        points = [row for row in rows if row["kind"] == kind]
        for shared in (False, True):
            chosen = [row for row in points if row["shared_cores"] == shared]
            if not chosen:
                continue
            by_time.scatter([row["train_seconds"] for row in chosen], [row["test_accuracy"] for row in chosen],
                            facecolors="none" if shared else colour, edgecolors=colour, s=45,
                            label=f"{'generated answers (label_only: one line)' if kind == 'chat' else 'classifier (label only)'}"
                                  f"{', cores shared' if shared else ''}")
    seen_at_accuracy: dict[float, int] = {}
    for row in sorted(rows, key=lambda row: row["train_seconds"]):  # names of equal accuracy stacked, not overprinted
        stacked = seen_at_accuracy.get(row["test_accuracy"], 0)
        seen_at_accuracy[row["test_accuracy"]] = stacked + 1
        by_time.annotate(row["variant"], (row["train_seconds"], row["test_accuracy"]), fontsize=7,
                         xytext=(4, 3 - 9 * stacked), textcoords="offset points")
    by_time.set_ylabel("label accuracy, 24 test reviews")
    by_time.set_title("test accuracy against training time, every variant")
    by_time.legend(fontsize=7, loc="upper left")
    for row in rows:
        curve = row.get("validation_curve")
        if curve:
            during.plot([point["seconds"] for point in curve], [point["accuracy"] for point in curve], marker="o",
                        label=f"{row['variant']} (test {row['test_accuracy']:.2f})")
    during.set_ylabel("label accuracy, 24 validation reviews")
    during.set_title("validation accuracy during training")
    during.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    temporary = target.with_name(target.name + ".tmp.png")
    figure.savefig(temporary, dpi=110)
    temporary.replace(target)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=HERE / "data" / "quality_results.jsonl")
    parser.add_argument("--out", type=Path, default=HERE / "quality_curve.png")
    arguments = parser.parse_args()
    rows = load(arguments.results)
    plot(rows, arguments.out)
    best_in_budget = max((row for row in rows if row["train_seconds"] <= BUDGET_SECONDS * 1.2 and row["kind"] == "chat"),
                         key=lambda row: row["test_accuracy"])
    best = max(rows, key=lambda row: row["test_accuracy"])
    print(f"wrote {arguments.out}: {len(rows)} variants; best two-line recipe within about the budget: "
          f"{best_in_budget['variant']} {best_in_budget['test_accuracy']:.2f}; best of all: {best['variant']} {best['test_accuracy']:.2f}")


if __name__ == "__main__":
    main()
