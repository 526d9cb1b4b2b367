"""Classification transfer learning (``task: classification``): one function from a validated config to a run.

    config -> device plan -> tokenizer -> checked, stratified, tokenized labelled texts (classification_data.py)
           -> model with a new head, the method applied (classifier.py) -> transformers' Trainer, evaluated every
              epoch (accuracy, macro-F1) -> model or adapter, its config naming the labels (id2label)

The run directory is the one SFT writes (``togi.runs``), with ``task: classification`` and the labels in
run.json, and the validation split's majority-class baseline recorded beside the scores it is to be beaten by.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from transformers import TrainerCallback

from togi.config import TrainConfig
from togi.data.examples import ClassificationExample
from togi.data.labels import accuracy_and_macro_f1
from togi.models.device import DevicePlan
from togi.models.resolve import load_tokenizer, resolve_model
from togi.runs import Run
from togi.train.result import RunResult
from togi.train.classification_data import load_classification_data, save_split, tokenize_labelled
from togi.train.classifier import HeadOnFeatures, apply_classifier_method, head_features, load_classifier
from togi.train.methods import count_parameters
from togi.train.custom_loss import with_custom_loss
from togi.train.session import TrainingSession

FEATURE_BATCH = 32  # examples per pass when a frozen model computes the head's features


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


def train_classifier(config: TrainConfig, *, resume_dir: Path | str | None = None, console: Any = None, log: Callable[[str], None] = print,
                     callbacks: Sequence[Any] = ()) -> RunResult:
    """Train a classifier as the config says; the result has its labels and its scores (see ``togi.train.train``).
    A classification run saves no checkpoints to continue from: ``resume_dir`` is refused."""
    from transformers import DataCollatorWithPadding, Trainer, default_data_collator, set_seed

    session = TrainingSession.open(config, resume_dir=resume_dir, console=console, log=log, callbacks=callbacks, resumable=False)
    run, plan, warn = session.run, session.plan, session.warn
    custom_loss = session.custom_loss()  # training.loss: found and its signature checked before any model loads
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
    baseline = majority_baseline(data.train, data.val)
    session.start(task="classification", labels=data.labels, head=head, parameters=str(parameters),
                  data={**session.fingerprint_data(), "train_examples": len(data.train), "val_examples": len(data.val),
                        "train_labels": dict(Counter(example.label for example in data.train)), "majority_baseline": baseline})

    trained, collator = model, DataCollatorWithPadding(tokenizer)
    features = head_features(model, head, train_set, tokenizer, batch_size=FEATURE_BATCH, device=plan.device) if config.method == "freeze" else None
    if features is not None:
        log("frozen backbone: its features were computed once; the head trains on them")
        trained, collator, train_set = HeadOnFeatures(model.get_submodule(head[0])), default_data_collator, features
        val_set = head_features(model, head, val_set, tokenizer, batch_size=FEATURE_BATCH, device=plan.device) if val_set else None

    trainer = (with_custom_loss(Trainer, custom_loss) if custom_loss else Trainer)(model=trained, args=_arguments(config, plan, run, has_val=val_set is not None, by_length=features is None),
                      train_dataset=train_set, eval_dataset=val_set, data_collator=collator, compute_metrics=label_scores(data.labels),
                      callbacks=session.callbacks(has_val=val_set is not None, extra=[EpochReport(log)]))
    if custom_loss:
        session.dry_run_loss(custom_loss, trainer, train_set)
    output = session.train(trainer)

    if run.checkpoints_dir.is_dir() and not any(run.checkpoints_dir.iterdir()):
        run.checkpoints_dir.rmdir()  # the Trainer makes it; only early stopping saves checkpoints
    (model if features is not None else trainer.model).save_pretrained(str(session.output_dir))
    tokenizer.save_pretrained(str(session.output_dir))
    return session.finish(trainer, output, parameters=parameters, scores={"majority_baseline": baseline}, labels=data.labels,
                          head_features="computed once" if features is not None else "computed every step")


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
