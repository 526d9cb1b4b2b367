"""Training health checks: overfitting warnings and the metrics a run records."""

from __future__ import annotations

from transformers import TrainerControl, TrainerState, TrainingArguments

from togi.train.callbacks import HealthGuard


def evaluate(guard: HealthGuard, step: int, loss: float) -> None:
    state = TrainerState()
    state.global_step = step
    guard.on_evaluate(TrainingArguments(output_dir="unused", report_to=[]), state, TrainerControl(), metrics={"eval_loss": loss})


def test_eval_loss_rising_three_evaluations_in_a_row_warns_of_overfitting():
    warnings: list[str] = []
    guard = HealthGuard(warnings.append)
    for step, loss in [(10, 2.0), (20, 1.5), (30, 1.6), (40, 1.7)]:
        evaluate(guard, step, loss)
    assert warnings == []  # two rises are not yet a trend
    evaluate(guard, 50, 1.8)
    assert len(warnings) == 1 and "step 50" in warnings[0] and "1.500 → 1.600 → 1.700 → 1.800" in warnings[0]
    assert guard.overfitting_warned_at == 50


def test_a_dip_resets_the_overfitting_count():
    warnings: list[str] = []
    guard = HealthGuard(warnings.append)
    for step, loss in enumerate([2.0, 2.1, 2.2, 2.15, 2.3, 2.4], start=1):
        evaluate(guard, step, loss)
    assert warnings == []


def test_a_nan_loss_stops_training_and_forbids_saving():
    guard = HealthGuard(lambda message: None)
    control = TrainerControl(should_save=True)
    state = TrainerState()
    state.global_step = 7
    guard.on_log(TrainingArguments(output_dir="unused", report_to=[]), state, control, logs={"loss": float("nan")})
    assert control.should_training_stop and not control.should_save and guard.bad_loss_step == 7
