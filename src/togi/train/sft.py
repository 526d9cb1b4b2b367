"""The supervised fine-tuning recipe: one readable function from a validated config to a run directory.

    config -> device plan -> model source and tokenizer -> checked, split, tokenized data
           -> model with the method applied -> TRL SFTTrainer with togi's callbacks -> adapter or model

Everything a run needs to be understood later is written to its run directory (see ``run_dir.py``).
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from togi.config import ADAPTER_METHODS, TrainConfig
from togi.data.labels import compile_label_pattern, label_of
from togi.data.template import FALLBACK_CHAT_TEMPLATE, chat_template_of
from togi.models.device import DevicePlan, plan_device
from togi.models.loading import load_causal_lm
from togi.models.resolve import load_tokenizer, resolve_model
from togi.train.attention import per_example_attention
from togi.train.callbacks import HealthGuard, MetricsRecorder, RichProgress
from togi.train.data import load_training_data, save_split, tokenize_examples
from togi.train.loss import compact_lm_loss, supports_compact_loss
from togi.train.methods import ParameterCount, apply_method, check_method_fits, count_parameters
from togi.train.samples import Sample, sample_generations, save_samples
from togi.train.task_metric import TaskScorer
from togi.train.threads import CpuThreadGovernor, threads_chosen_by_user
from togi.train.sampling import LabelBalancedSampler, SeededLengthGroupedSampler
from togi.runs import Run
from togi.train.run_dir import default_run_dir, file_fingerprint, library_versions, write_model_card

OOM_REMEDIES = (
    "halve training.batch_size and double training.gradient_accumulation (same effective batch); "
    "turn on training.gradient_checkpointing; use method qlora on a GPU; lower data.max_length; "
    "or let training.auto_batch find the largest batch that fits"
)


class TrainingFailed(Exception):
    """The run stopped for a reason the user can act on; ``run_dir`` keeps what was saved."""

    def __init__(self, message: str, run_dir: Path) -> None:
        super().__init__(message)
        self.run_dir = run_dir


@dataclass
class RunResult:
    run_dir: Path
    output_dir: Path
    status: str
    steps: int
    train_loss: float | None
    eval_loss: float | None
    parameters: ParameterCount
    tokens_per_second: float | None
    warnings: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def _is_out_of_memory(error: BaseException) -> bool:
    message = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in message or "can't allocate memory" in message


def train(
    config: TrainConfig,
    *,
    resume_dir: Path | str | None = None,
    console: Any = None,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Any] = (),
) -> RunResult:
    """Train as the config says and return where the result is. ``resume_dir`` continues a run from its
    last checkpoint, with the same data order and random state as if it had never stopped; ``callbacks``
    are more transformers ``TrainerCallback``s to run beside togi's own."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    run = Run(Path(resume_dir) if resume_dir else (config.output_dir or default_run_dir(config)))
    checkpoint = run.last_checkpoint() if resume_dir else None
    if not resume_dir and run.path.exists() and any(run.path.iterdir()):
        raise TrainingFailed(f"{run.path} already holds a run; choose another output_dir, or continue it with --resume {run.path}", run.path)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        log(f"warning: {message}")

    plan = plan_device(config.training.precision)
    source = resolve_model(config.model, log)
    check_method_fits(config, source)
    tokenizer = load_tokenizer(config.model, log)
    template_note = "the model's own"
    if chat_template_of(tokenizer)[1]:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        template_note = "togi's ChatML fallback (the tokenizer had none)"
        warn("the tokenizer has no chat template: using togi's ChatML fallback (recorded in run.json)")
    data = load_training_data(config, tokenizer, seed=config.training.seed)
    fingerprints = {"train": file_fingerprint(config.data.train_file),
                    "val": file_fingerprint(config.data.val_file) if config.data.val_file else None}
    if resume_dir:
        _require_same_data(run, fingerprints)
    log(f"data: {len(data.train)} training and {len(data.val)} validation examples; {plan.description}")
    for finding in data.warnings[:5]:
        warn(f"data: {finding}")
    run.path.mkdir(parents=True, exist_ok=True)
    save_split(data.train, run.split_path("train"))
    if data.val:
        save_split(data.val, run.split_path("val"))
    train_set = tokenize_examples(data.train, tokenizer, max_length=config.data.max_length, train_on_prompt=config.data.train_on_prompt)
    val_set = tokenize_examples(data.val, tokenizer, max_length=config.data.max_length, train_on_prompt=config.data.train_on_prompt) if data.val else None

    model = load_causal_lm(source, plan, quantize_4bit=config.method == "qlora")
    set_seed(config.training.seed)  # adapter initialisation draws random numbers: the same seed, the same run
    model = apply_method(model, config, source.directory)
    parameters = count_parameters(model)
    log(str(parameters))

    run.write_config(config)
    run.write_info(
        status="running", method=config.method, model=config.model, device=plan.description, parameters=str(parameters),
        chat_template=template_note, chat_template_text=chat_template_of(tokenizer)[0], eos_token=tokenizer.eos_token,
        versions=library_versions(), started_at=int(time.time()),
        data={**fingerprints, "train_examples": len(data.train), "val_examples": len(data.val)},
    )
    if resume_dir:
        run.drop_metrics_after(int(checkpoint.name.rsplit("-", 1)[-1]) if checkpoint else 0)
        log(f"resuming from {checkpoint}" if checkpoint else "no checkpoint was saved yet: starting the run over")

    recorder = MetricsRecorder(run.metrics_path, run.plot_path)
    guard = HealthGuard(warn)
    callbacks = [recorder, guard, *callbacks]
    if plan.device == "cpu" and not threads_chosen_by_user():
        callbacks.append(CpuThreadGovernor())
    if console is not None:
        callbacks.append(RichProgress(console, recorder))
    if config.monitoring.early_stopping_patience and val_set is not None:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.monitoring.early_stopping_patience))

    scorer = None
    if config.monitoring.watches_the_task:
        if data.val:
            scorer = TaskScorer(data.val, tokenizer, config.monitoring.eval_metric, label_pattern=compile_label_pattern(config.monitoring.label_pattern),
                                limit=config.monitoring.eval_examples, max_new_tokens=config.monitoring.eval_max_new_tokens,
                                batch_size=config.training.batch_size)
        else:
            warn(f"monitoring.eval_metric {config.monitoring.eval_metric} is not scored: there are no validation examples (set data.val_file or data.val_ratio)")

    train_labels = None
    if config.data.balance_labels:
        pattern = compile_label_pattern(config.monitoring.label_pattern)
        train_labels = [label_of(example, pattern) for example in data.train]
        counts = Counter(label for label in train_labels if label is not None)
        log(f"batches balance the labels: {', '.join(f'{label} {count}' for label, count in sorted(counts.items()))}"
            + (f"; {train_labels.count(None)} examples without a label come last in each epoch" if None in train_labels else ""))
        if len(counts) < 2:
            warn(f"data.balance_labels found {len(counts)} label(s) with monitoring.label_pattern in the training answers; "
                 "batches keep the file's shuffled order")
            train_labels = None

    trainer = _trainer_class(SFTTrainer, scorer, warn, train_labels)(
        model=model,
        args=_trainer_arguments(SFTConfig, config, plan, run, has_val=val_set is not None),
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    try:
        with per_example_attention(trainer.model) if plan.device == "cpu" and trainer.args.padding_free else nullcontext():
            output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except (RuntimeError, MemoryError) as error:
        if _is_out_of_memory(error):
            run.write_info(status="failed", error="out of memory")
            raise TrainingFailed(f"out of memory at batch size {config.training.batch_size}: {OOM_REMEDIES}", run.path) from None
        raise
    finally:
        recorder.refresh_plot()

    if guard.bad_loss_step is not None:
        last_good = run.last_checkpoint()
        run.write_info(status="failed", error=f"loss became NaN or infinite at step {guard.bad_loss_step}",
                       last_good_checkpoint=str(last_good) if last_good else None)
        raise TrainingFailed(
            f"the loss became NaN or infinite at step {guard.bad_loss_step}; training stopped and nothing was saved from that step "
            f"(last good checkpoint: {last_good or 'none yet'}). Lower training.learning_rate, keep max_grad_norm at 1.0, "
            "or train in fp32 (training.precision: fp32)", run.path)

    output_dir = run.output_dir_for(config.method)
    trainer.save_model(str(output_dir))
    tokenizer.save_pretrained(str(output_dir))
    samples = []
    if config.monitoring.samples:
        held_out = (data.val or data.train)[: config.monitoring.samples]
        load_base = None if config.method in ADAPTER_METHODS else (lambda: load_causal_lm(source, plan))
        samples = sample_generations(trainer.model, tokenizer, held_out, load_base=load_base)
        save_samples(samples, run.samples_path)
    records = [r for r in run.metrics() if "train_loss" in r or "eval_loss" in r]
    train_losses = [r["train_loss"] for r in records if "train_loss" in r]
    eval_losses = [r["eval_loss"] for r in records if "eval_loss" in r]
    speeds = [r["tokens_per_second"] for r in records if "tokens_per_second" in r]
    status = "early_stopped" if trainer.state.global_step < trainer.state.max_steps else "succeeded"
    result = RunResult(
        run_dir=run.path, output_dir=output_dir, status=status, steps=trainer.state.global_step,
        train_loss=train_losses[-1] if train_losses else output.training_loss,
        eval_loss=eval_losses[-1] if eval_losses else None, parameters=parameters,
        tokens_per_second=round(sum(speeds) / len(speeds), 1) if speeds else None, warnings=warnings, samples=samples,
    )
    run.write_info(status=status, finished_at=int(time.time()), output=str(output_dir), warnings=warnings,
                   result={"steps": result.steps, "train_loss": result.train_loss, "eval_loss": result.eval_loss,
                           "tokens_per_second": result.tokens_per_second})
    write_model_card(run, config, run.info)
    return result


def _require_same_data(run: Run, fingerprints: dict[str, Any]) -> None:
    """A resumed run must see the data it started with, or it would silently train on something else."""
    recorded = run.info.get("data", {})
    for name, fingerprint in fingerprints.items():
        before = recorded.get(name)
        if before and fingerprint and before["sha256"] != fingerprint["sha256"]:
            raise TrainingFailed(f"{fingerprint['path']} changed since this run started, so resuming would train on other data; "
                                 "start a new run instead", run.path)


def _trainer_class(sft_trainer: type, scorer: TaskScorer | None = None, warn: Callable[[str], None] = print,
                   train_labels: list[str | None] | None = None) -> type:
    """TRL's SFTTrainer with a length-grouped order that survives resuming, or batches that take the labels in
    turn when ``train_labels`` are given (``data.balance_labels``; both in ``sampling.py``), the task metric
    scored at each evaluation when the recipe asks for one (``task_metric.py``) and, on a CPU, the LM head
    applied only where the loss is taken (see ``loss.py``). On a CPU, ``train`` also runs it with attention
    inside each example of a padding-free batch (``attention.py``) and fits the thread count to the cores other
    processes leave free (``threads.py``)."""

    class TogiSFTTrainer(sft_trainer):  # type: ignore[misc, valid-type]
        def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
            """The eval loss, then the task metric in the same metrics, so that the log, early stopping and
            the best checkpoint all see it."""
            output = super().evaluation_loop(*args, **kwargs)
            if scorer is not None:
                with self.autocast_smart_context_manager():
                    scores = scorer.score(self.model)
                prefix = kwargs.get("metric_key_prefix", "eval")
                output.metrics.update({f"{prefix}_{name}": value for name, value in scores.metrics.items()})
                cut = scores.cut_labels(scorer.max_new_tokens)
                if cut and not getattr(self, "_cut_labels_reported", False):  # once: it repeats at every evaluation
                    warn(f"step {self.state.global_step}: {cut}")
                    self._cut_labels_reported = True
                collapse = scores.collapse()
                if collapse:
                    warn(f"step {self.state.global_step}: {collapse}; try a lower learning rate, more steps, or full fine-tuning "
                         "(see benchmarks/QUALITY.md)")
            return output

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            if train_labels is not None:
                return LabelBalancedSampler(train_labels, seed=seed)
            if self.args.train_sampling_strategy != "group_by_length":
                return super()._get_train_sampler(train_dataset)
            lengths = [len(ids) for ids in dataset["input_ids"]]
            return SeededLengthGroupedSampler(lengths, self.args.train_batch_size * self.args.gradient_accumulation_steps, seed=seed)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            if return_outputs or not self._compact_loss_applies(model, inputs):
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            parts = compact_lm_loss(model, inputs, num_items_in_batch)
            # The metrics TRL's own compute_loss records, which its log() reports: token accuracy and real tokens seen
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["mean_token_accuracy"].append(parts.correct / parts.labelled if parts.labelled else 0.0)
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["position_ids"].size(1)
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return parts.loss

        def _compact_loss_applies(self, model: Any, inputs: dict[str, Any]) -> bool:
            """On a CPU, for the plain next-token loss; everything else (CUDA, where TRL already projects only the
            labelled positions; DFT loss, label smoothing, MoE auxiliary loss, prompt tuning) keeps TRL's path."""
            args = self.args
            return (args.device.type == "cpu" and args.loss_type == "nll" and self.label_smoother is None
                    and self.compute_loss_func is None and not self.aux_loss_enabled and args.world_size == 1
                    and "labels" in inputs and "shift_labels" not in inputs and supports_compact_loss(model))

    return TogiSFTTrainer


def _read_records(run: Run) -> list[dict]:
    
    return run.metrics()


def _trainer_arguments(sft_config_class: type, config: TrainConfig, plan: DevicePlan, run: Run, *, has_val: bool) -> Any:
    training, monitoring = config.training, config.monitoring
    virtual_tokens = config.method in ("prompt_tuning", "prefix_tuning")
    activation_checkpointing = plan.device == "cuda" if training.gradient_checkpointing == "auto" else training.gradient_checkpointing
    return sft_config_class(
        output_dir=str(run.checkpoints_dir),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=training.scheduler,
        warmup_steps=training.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        seed=training.seed,
        data_seed=training.seed,
        bf16=plan.precision == "bf16",
        fp16=plan.precision == "fp16",
        use_cpu=plan.device == "cpu",
        activation_checkpointing=activation_checkpointing,
        auto_find_batch_size=training.auto_batch,
        logging_steps=monitoring.log_every,
        logging_nan_inf_filter=False,
        eval_strategy="steps" if has_val else "no",
        eval_steps=monitoring.eval_every,
        save_strategy="steps",
        save_steps=monitoring.save_every,
        save_total_limit=monitoring.keep_checkpoints,
        load_best_model_at_end=bool((monitoring.early_stopping_patience or monitoring.watches_the_task) and has_val),
        metric_for_best_model=f"eval_{monitoring.eval_metric}",
        greater_is_better=monitoring.watches_the_task,
        report_to=[] if monitoring.report_to == "none" else [monitoring.report_to],
        disable_tqdm=True,
        # Tokenized and truncated by togi. Padding-free batches flatten examples with position ids: transformers
        # turns them into a block-diagonal mask, and on a CPU togi attends within each example (``attention.py``),
        # so examples never attend to each other.
        max_length=None,
        padding_free=(config.data.packing is True or (config.data.packing == "auto" and plan.device in ("cuda", "cpu"))) and not virtual_tokens,
        train_sampling_strategy="group_by_length" if config.data.group_by_length else "random",
        dataloader_num_workers=0,
    )
