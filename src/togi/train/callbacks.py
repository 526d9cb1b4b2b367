"""Monitoring during training, as transformers ``TrainerCallback``s.

- ``MetricsRecorder``: one JSON line per logged step (train loss, grad norm, learning rate, tokens/s,
  eval loss, eval token accuracy, a classifier's eval accuracy and macro-F1, peak memory) and the
  loss-curve PNG, redrawn after an evaluation or every 10 records, at most every 5 s (drawing takes a
  third of a second, longer than a step of a small model) and when training ends.
- ``HealthGuard``: stops the run on a NaN or infinite loss, before anything is saved from it, and warns
  when the eval loss has risen three evaluations in a row (overfitting).
- ``RichProgress``: a progress bar with loss, learning rate, tokens/s and ETA.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from togi.train.plot import plot_losses

OVERFITTING_RISES = 3


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class MetricsRecorder(TrainerCallback):
    def __init__(self, metrics_path: Path, plot_path: Path, plot_every: int = 10, min_plot_seconds: float = 5.0) -> None:
        self.metrics_path = metrics_path
        self.plot_path = plot_path
        self.plot_every = plot_every
        self.min_plot_seconds = min_plot_seconds
        self._last_plot = -math.inf
        self._last_time: float | None = None
        self._last_tokens = 0
        self._records_since_plot = 0
        self.last_train: dict[str, Any] = {}  # the latest step record, and the latest evaluation, for the progress bar
        self.last_eval: dict[str, Any] = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._last_time = time.perf_counter()
        self._last_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if not logs or "total_flos" in logs or "train_runtime" in logs:
            return
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "time": round(time.time(), 3)}
        if "loss" in logs:
            now = time.perf_counter()
            tokens = int(logs.get("num_tokens", getattr(state, "num_input_tokens_seen", 0)) or 0)
            elapsed = now - (self._last_time or now)
            record.update(
                train_loss=logs["loss"], grad_norm=logs.get("grad_norm"), learning_rate=logs.get("learning_rate"),
                train_token_accuracy=logs.get("mean_token_accuracy"),
                tokens_per_second=round((tokens - self._last_tokens) / elapsed, 2) if elapsed > 0 and tokens else None,
                tokens_seen=tokens or None,
            )
            self._last_time, self._last_tokens = now, tokens
        if "eval_loss" in logs:
            record.update(eval_loss=logs["eval_loss"], eval_token_accuracy=logs.get("eval_mean_token_accuracy"),
                          eval_accuracy=logs.get("eval_accuracy"), eval_macro_f1=logs.get("eval_macro_f1"),
                          eval_exact_match=logs.get("eval_exact_match"), eval_rouge_l=logs.get("eval_rouge_l"))
        record["peak_memory_mb"] = round(peak_memory_mb(), 1)
        record = {key: value for key, value in record.items() if value is not None}
        if "train_loss" in record:
            self.last_train = record
        if "eval_loss" in record:
            self.last_eval = record
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        self._records_since_plot += 1
        due = "eval_loss" in record or self._records_since_plot >= self.plot_every
        if due and time.perf_counter() - self._last_plot >= self.min_plot_seconds:
            self.refresh_plot()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.refresh_plot()

    def refresh_plot(self) -> None:
        self._records_since_plot = 0
        self._last_plot = time.perf_counter()
        plot_losses(self.metrics_path, self.plot_path)


class HealthGuard(TrainerCallback):
    """NaN/inf loss stops training without saving; a rising eval loss raises an overfitting warning."""

    def __init__(self, warn: Callable[[str], None]) -> None:
        self.warn = warn
        self.bad_loss_step: int | None = None
        self.overfitting_warned_at: int | None = None
        self._eval_losses: list[float] = []

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.bad_loss_step = state.global_step
            control.should_training_stop = True
            control.should_save = False

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.bad_loss_step is not None:  # never checkpoint weights that a NaN step produced
            control.should_save = False
            control.should_training_stop = True

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        loss = (metrics or {}).get("eval_loss")
        if loss is None:
            return
        self._eval_losses.append(loss)
        recent = self._eval_losses[-(OVERFITTING_RISES + 1):]
        if len(recent) == OVERFITTING_RISES + 1 and all(b > a for a, b in zip(recent, recent[1:])):
            self.overfitting_warned_at = state.global_step
            self.warn(f"step {state.global_step}: eval loss rose {OVERFITTING_RISES} evaluations in a row "
                      f"({' → '.join(f'{value:.3f}' for value in recent)}): the model is probably overfitting. "
                      "Consider fewer epochs, a lower learning rate, more data, or monitoring.early_stopping_patience.")


class RichProgress(TrainerCallback):
    """A rich progress bar in place of transformers' tqdm bar."""

    def __init__(self, console: Any, recorder: MetricsRecorder) -> None:
        self.console = console
        self.recorder = recorder
        self.progress: Any = None
        self.task: Any = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]training"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step, status="")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=state.global_step, status=self._status())

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs: dict[str, float] | None = None,
               **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task, status=self._status())

    def _status(self) -> str:
        record = {**self.recorder.last_train, **self.recorder.last_eval}
        parts = []
        if "train_loss" in record:
            parts.append(f"loss {record['train_loss']:.4f}")
        if "eval_loss" in record:
            parts.append(f"eval {record['eval_loss']:.4f}")
        if "eval_accuracy" in record:
            parts.append(f"accuracy {record['eval_accuracy']:.3f}")
        if "learning_rate" in record:
            parts.append(f"lr {record['learning_rate']:.2e}")
        if "tokens_per_second" in record:
            parts.append(f"{record['tokens_per_second']:.0f} tok/s")
        return " · ".join(parts)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
