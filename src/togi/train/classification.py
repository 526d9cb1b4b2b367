"""Classification transfer learning (``task: classification``): one function from a validated config to a run.

    config -> device plan -> tokenizer -> checked, stratified, tokenized labelled texts (classification_data.py)
           -> model with a new head, the method applied (classifier.py) -> transformers' Trainer, evaluated every
              epoch (accuracy, macro-F1) -> model or adapter, its config naming the labels (id2label)

The run directory is the one SFT writes (``run_dir.py``), with ``task: classification`` and the labels in
run.json, and the validation split's majority-class baseline recorded beside the scores it is to be beaten by.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from transformers import TrainerCallback

from togi.config import TrainConfig
from togi.data.examples import ClassificationExample
from togi.data.labels import accuracy_and_macro_f1
from togi.models.device import DevicePlan, plan_device
from togi.models.resolve import load_tokenizer, resolve_model
from togi.train.callbacks import HealthGuard, MetricsRecorder, RichProgress
from togi.train.classification_data import load_classification_data, save_split, tokenize_labelled
from togi.train.classifier import HeadOnFeatures, apply_classifier_method, head_features, load_classifier
from togi.train.methods import ParameterCount, count_parameters
from togi.runs import Run
from togi.train.run_dir import default_run_dir, file_fingerprint, library_versions, write_model_card
from togi.train.sft import TrainingFailed
from togi.train.threads import CpuThreadGovernor, threads_chosen_by_user

FEATURE_BATCH = 32  # examples per pass when a frozen model computes the head's features


@dataclass
class ClassificationResult:
    run_dir: Path
    output_dir: Path
    labels: list[str]
    steps: int
    train_loss: float | None
    eval_loss: float | None
    accuracy: float | None
    macro_f1: float | None
    majority_baseline: float | None  # the validation share of the most common training label
    parameters: ParameterCount
    seconds: float
    warnings: list[str] = field(default_factory=list)


def majority_baseline(train: list[ClassificationExample], val: list[ClassificationExample]) -> float | None:
    """The accuracy on ``val`` of always answering the most common training label."""
    if not val:
        return None
    common = Counter(example.label for example in train).most_common(1)[0][0]
    return sum(example.label == common for example in val) / len(val)


def label_scores(labels: list[str]) -> Callable[[Any], dict[str, float]]:
    """The Trainer's ``compute_metrics``: accuracy and macro-F1 of the arg-max label."""
    def scores(prediction: Any) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        accuracy, macro_f1 = accuracy_and_macro_f1([labels[i] for i in logits.argmax(-1)], [labels[i] for i in prediction.label_ids])
        return {"accuracy": accuracy, "macro_f1": macro_f1}

    return scores


class EpochReport(TrainerCallback):
    """One line per evaluation: the epoch, the validation loss, accuracy and macro-F1."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        if metrics and "eval_accuracy" in metrics:
            self.log(f"epoch {state.epoch:g}: eval loss {metrics['eval_loss']:.4f} · accuracy {metrics['eval_accuracy']:.3f} · "
                     f"macro-F1 {metrics['eval_macro_f1']:.3f}")


def train_classifier(config: TrainConfig, *, console: Any = None, log: Callable[[str], None] = print,
                     callbacks: Sequence[Any] = ()) -> ClassificationResult:
    """Train a classifier as the config says and return where it is and how it scored."""
    from transformers import DataCollatorWithPadding, Trainer, default_data_collator, set_seed
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    started = time.perf_counter()
    run = Run(config.output_dir or default_run_dir(config))
    if run.path.exists() and any(run.path.iterdir()):
        raise TrainingFailed(f"{run.path} already holds a run; choose another output_dir", run.path)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log(f"warning: {message}")

    plan = plan_device(config.training.precision)
    source = resolve_model(config.model, log)
    tokenizer = load_tokenizer(config.model, log)
    if tokenizer.pad_token is None:  # decoders have none; batches of texts of several lengths need one
        tokenizer.pad_token = tokenizer.eos_token
    data = load_classification_data(config, tokenizer)
    log(f"data: {len(data.train)} training and {len(data.val)} validation examples, labels {', '.join(data.labels)}; {plan.description}")
    for finding in data.warnings[:5]:
        warn(f"data: {finding}")

    set_seed(config.training.seed)  # the new head's initial weights are random
    model, head = load_classifier(source, plan, data.labels, tokenizer)
    model = apply_classifier_method(model, head, config)
    parameters = count_parameters(model)
    log(str(parameters))
    max_length = min(config.data.max_length, getattr(model.config, "max_position_embeddings", None) or config.data.max_length)
    train_set = tokenize_labelled(data.train, data.labels, tokenizer, max_length=max_length)
    val_set = tokenize_labelled(data.val, data.labels, tokenizer, max_length=max_length) if data.val else None

    run.path.mkdir(parents=True, exist_ok=True)
    save_split(data.train, run.split_path("train"))
    if data.val:
        save_split(data.val, run.split_path("val"))
    run.write_config(config)
    baseline = majority_baseline(data.train, data.val)
    run.write_info(
        status="running", task="classification", method=config.method, model=config.model, labels=data.labels, head=head,
        device=plan.description, parameters=str(parameters), versions=library_versions(), started_at=int(time.time()),
        data={"train": file_fingerprint(config.data.train_file),
              "val": file_fingerprint(config.data.val_file) if config.data.val_file else None,
              "train_examples": len(data.train), "val_examples": len(data.val),
              "train_labels": dict(Counter(example.label for example in data.train)), "majority_baseline": baseline},
    )

    trained, collator = model, DataCollatorWithPadding(tokenizer)
    features = head_features(model, head, train_set, tokenizer, batch_size=FEATURE_BATCH, device=plan.device) if config.method == "freeze" else None
    if features is not None:
        log("frozen backbone: its features were computed once; the head trains on them")
        trained, collator, train_set = HeadOnFeatures(model.get_submodule(head[0])), default_data_collator, features
        val_set = head_features(model, head, val_set, tokenizer, batch_size=FEATURE_BATCH, device=plan.device) if val_set else None

    recorder = MetricsRecorder(run.metrics_path, run.plot_path)
    guard = HealthGuard(warn)
    callbacks = [recorder, guard, EpochReport(log), *callbacks]
    if plan.device == "cpu" and not threads_chosen_by_user():
        callbacks.append(CpuThreadGovernor())
    if console is not None:
        callbacks.append(RichProgress(console, recorder))
    if config.monitoring.early_stopping_patience and val_set is not None:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.monitoring.early_stopping_patience))
    trainer = Trainer(model=trained, args=_arguments(config, plan, run, has_val=val_set is not None, by_length=features is None),
                      train_dataset=train_set, eval_dataset=val_set, data_collator=collator, compute_metrics=label_scores(data.labels),
                      callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    try:
        trainer.train()
    finally:
        recorder.refresh_plot()
    if guard.bad_loss_step is not None:
        run.write_info(status="failed", error=f"loss became NaN or infinite at step {guard.bad_loss_step}")
        raise TrainingFailed(f"the loss became NaN or infinite at step {guard.bad_loss_step}; nothing was saved. Lower "
                             "training.learning_rate, or train in fp32 (training.precision: fp32)", run.path)

    if run.checkpoints_dir.is_dir() and not any(run.checkpoints_dir.iterdir()):
        run.checkpoints_dir.rmdir()  # the Trainer makes it; only early stopping saves checkpoints
    output_dir = run.output_dir_for(config.method)
    (model if features is not None else trainer.model).save_pretrained(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    records = run.metrics()
    last_train = next((r for r in reversed(records) if "train_loss" in r), {})
    last_eval = next((r for r in reversed(records) if "eval_loss" in r), {})
    result = ClassificationResult(
        run_dir=run.path, output_dir=output_dir, labels=data.labels, steps=trainer.state.global_step,
        train_loss=last_train.get("train_loss"), eval_loss=last_eval.get("eval_loss"), accuracy=last_eval.get("eval_accuracy"),
        macro_f1=last_eval.get("eval_macro_f1"), majority_baseline=baseline, parameters=parameters,
        seconds=round(time.perf_counter() - started, 1), warnings=warnings,
    )
    run.write_info(status="succeeded", finished_at=int(time.time()), output=str(output_dir), warnings=warnings,
                   head_features="computed once" if features is not None else "computed every step",
                   result={"steps": result.steps, "train_loss": result.train_loss, "eval_loss": result.eval_loss,
                           "accuracy": result.accuracy, "macro_f1": result.macro_f1, "majority_baseline": baseline,
                           "seconds": result.seconds})
    write_model_card(run, config, run.info)
    return result


def _arguments(config: TrainConfig, plan: DevicePlan, run: Run, *, has_val: bool, by_length: bool) -> Any:
    from transformers import TrainingArguments

    training, monitoring = config.training, config.monitoring
    stop_early = bool(monitoring.early_stopping_patience and has_val)
    return TrainingArguments(
        output_dir=str(run.checkpoints_dir), num_train_epochs=training.epochs, max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size, per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation, learning_rate=config.learning_rate,
        lr_scheduler_type=training.scheduler, warmup_steps=training.warmup_ratio,  # a float below 1 is a ratio of the steps
        weight_decay=training.weight_decay, max_grad_norm=training.max_grad_norm, seed=training.seed, data_seed=training.seed,
        bf16=plan.precision == "bf16", fp16=plan.precision == "fp16", use_cpu=plan.device == "cpu",
        logging_steps=monitoring.log_every, logging_nan_inf_filter=False, eval_strategy="epoch" if has_val else "no",
        # Checkpoints only where early stopping needs them to return to the best epoch: a classification run starts over.
        save_strategy="epoch" if stop_early else "no", save_total_limit=monitoring.keep_checkpoints,
        load_best_model_at_end=stop_early, metric_for_best_model="macro_f1", greater_is_better=True,
        train_sampling_strategy="group_by_length" if by_length and config.data.group_by_length else "random",
        report_to=[] if monitoring.report_to == "none" else [monitoring.report_to], disable_tqdm=True, dataloader_num_workers=0,
    )
