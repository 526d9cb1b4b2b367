"""The supervised fine-tuning recipe: one readable function from a validated config to a run directory.

    config -> device plan -> model source and tokenizer -> checked, split, tokenized data
           -> model with the method applied -> TRL SFTTrainer with togi's callbacks -> adapter or model

Run it through ``togi.train.train``, which picks the recipe a config names. What every recipe does around its
trainer (the run directory, resuming, callbacks, failures, the result) is ``session.py``'s.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Sequence

from togi.config import CPU_MICRO_BATCH_TOKENS, TrainConfig
from togi.data.labels import compile_label_pattern, label_of
from togi.data.template import FALLBACK_CHAT_TEMPLATE, chat_template_of
from togi.errors import TogiError
from togi.models.device import DevicePlan
from togi.models.loading import load_causal_lm
from togi.models.resolve import load_tokenizer, resolve_model
from togi.runs import Run
from togi.train.result import RunResult
from togi.train.attention import PER_EXAMPLE_SDPA, per_example_attention
from togi.train.custom_loss import CustomLoss
from togi.train.data import load_training_data, save_split, tokenize_examples
from togi.train.distributed import strategy_arguments, transformer_layer_classes
from togi.train.label_weights import LABEL_WEIGHTS, LabelWeightCollator
from togi.train.library_adapters import TrainSamplerHook, attention_implementation
from togi.train.loss import compact_lm_loss, supports_compact_loss, unwrapped_causal_lm
from togi.train.micro_batches import split_padding_free_batch
from togi.train.shared_prefix import real_tokens, share_common_prefix, shared_prefix_length
from togi.train.methods import apply_method, check_method_fits, count_parameters
from togi.train.samples import sample_generations, save_samples
from togi.train.sampling import LabelBalancedSampler, SeededLengthGroupedSampler
from togi.train.session import TrainingSession
from togi.train.task_metric import TaskScorer


def train_sft(
    config: TrainConfig,
    *,
    resume_dir: Path | str | None = None,
    console: Any = None,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Any] = (),
) -> RunResult:
    """Fine-tune a chat model on chat examples as the config says (see ``togi.train.train`` for the arguments)."""
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    session = TrainingSession.open(config, resume_dir=resume_dir, console=console, log=log, callbacks=callbacks)
    run, plan, warn, log = session.run, session.plan, session.warn, session.log  # silent on every process but the main one
    custom_loss = session.custom_loss()  # training.loss: found and its signature checked before any model loads
    source = resolve_model(config.model, log)
    check_method_fits(config, source)
    tokenizer = load_tokenizer(config.model, log)
    template_note = "the model's own"
    if chat_template_of(tokenizer)[1]:
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
        template_note = "togi's ChatML fallback (the tokenizer had none)"
        warn("the tokenizer has no chat template: using togi's ChatML fallback (recorded in run.json)")
    data = load_training_data(config, tokenizer, seed=config.training.seed)
    fingerprints = session.fingerprint_data()
    log(f"data: {len(data.train)} training and {len(data.val)} validation examples; {plan.description}")
    for finding in data.warnings[:5]:
        warn(f"data: {finding}")
    if session.main:
        run.path.mkdir(parents=True, exist_ok=True)
        save_split(data.train, run.split_path("train"))
        if data.val:
            save_split(data.val, run.split_path("val"))
    label_pattern = compile_label_pattern(config.monitoring.label_pattern)
    tokenized = tokenize_examples(data.train, tokenizer, max_length=config.data.max_length, train_on_prompt=config.data.train_on_prompt,
                                  label_pattern=label_pattern, label_loss_weight=config.data.label_loss_weight)
    train_set = tokenized.dataset
    if config.data.label_loss_weight != 1:
        found = len(train_set) - tokenized.without_label
        log(f"the label's tokens weigh {config.data.label_loss_weight:g}x in the training loss (data.label_loss_weight; the eval loss "
            f"is unweighted): found in {found} of {len(train_set)} training answers")
        if tokenized.without_label:
            warn(f"data.label_loss_weight: monitoring.label_pattern reads no label in {tokenized.without_label} of {len(train_set)} "
                 "training answers; their tokens weigh 1")
    # The validation loss stays the plain next-token loss, comparable across recipes.
    val_set = tokenize_examples(data.val, tokenizer, max_length=config.data.max_length,
                                train_on_prompt=config.data.train_on_prompt).dataset if data.val else None

    model = load_causal_lm(source, plan, quantize_4bit=config.traits.needs_cuda)
    set_seed(config.training.seed)  # adapter initialisation draws random numbers: the same seed, the same run
    model = apply_method(model, config, source.directory)
    parameters = count_parameters(model)
    log(str(parameters))

    session.start(parameters=str(parameters), chat_template=template_note, chat_template_text=chat_template_of(tokenizer)[0],
                  eos_token=tokenizer.eos_token, data={**fingerprints, "train_examples": len(data.train), "val_examples": len(data.val)})

    scorer = None
    if config.monitoring.watches_the_task:
        if data.val:
            scorer = TaskScorer(data.val, tokenizer, config.monitoring.eval_metric, label_pattern=label_pattern,
                                limit=config.monitoring.eval_examples, max_new_tokens=config.monitoring.eval_max_new_tokens,
                                batch_size=config.training.batch_size)
        else:
            warn(f"monitoring.eval_metric {config.monitoring.eval_metric} is not scored: there are no validation examples (set data.val_file or data.val_ratio)")

    train_labels = None
    if config.data.balance_labels:
        train_labels = [label_of(example, label_pattern) for example in data.train]
        counts = Counter(label for label in train_labels if label is not None)
        log(f"batches balance the labels: {', '.join(f'{label} {count}' for label, count in sorted(counts.items()))}"
            + (f"; {train_labels.count(None)} examples without a label come last in each epoch" if None in train_labels else ""))
        if len(counts) < 2:
            warn(f"data.balance_labels found {len(counts)} label(s) with monitoring.label_pattern in the training answers; "
                 "batches keep the file's shuffled order")
            train_labels = None

    arguments = _trainer_arguments(SFTConfig, config, plan, run, has_val=val_set is not None,
                                   distributed=strategy_arguments(config, session.processes, plan.device, plan.precision, run.path,
                                                                  transformer_layer_classes(model)))
    # A loss of the user's sees the batch as the collator made it: no passes of bounded tokens, no shared prefix. Several
    # processes take one pass each per batch: a process taking more passes than another would wait on it forever.
    micro_batch_tokens = None if custom_loss or session.processes.several else _micro_batch_tokens(config, plan, arguments.padding_free)
    if micro_batch_tokens:
        log(f"each forward and backward pass takes at most {micro_batch_tokens} tokens of a batch (training.micro_batch_tokens)")
    on_cpu_padding_free = plan.device == "cpu" and arguments.padding_free
    trainer = _trainer_class(SFTTrainer, scorer, warn, train_labels, micro_batch_tokens, share_prefixes=on_cpu_padding_free and not custom_loss,
                             custom_loss=custom_loss)(
        model=model,
        args=arguments,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        callbacks=session.callbacks(has_val=val_set is not None),
    )
    if config.data.label_loss_weight != 1:
        trainer.data_collator = LabelWeightCollator(trainer.data_collator)
    if custom_loss:
        session.dry_run_loss(custom_loss, trainer, train_set)
    output = session.train(trainer, around=per_example_attention(trainer.model) if on_cpu_padding_free else None)

    trainer.save_model(str(session.output_dir))  # every process joins: FSDP gathers the whole weights on rank 0
    if not session.main:
        return session.finish(trainer, output, parameters=parameters)
    tokenizer.save_pretrained(str(session.output_dir))
    samples = []
    if config.monitoring.samples and trainer.is_fsdp_enabled:
        log("no sample answers: the model is sharded over the processes (read them with togi chat or togi eval)")
    elif config.monitoring.samples:
        held_out = (data.val or data.train)[: config.monitoring.samples]
        load_base = None if config.traits.adapter else (lambda: load_causal_lm(source, plan))
        samples = sample_generations(trainer.model, tokenizer, held_out, load_base=load_base)
        save_samples(samples, run.samples_path)
    return session.finish(trainer, output, parameters=parameters, samples=samples)


def _micro_batch_tokens(config: TrainConfig, plan: DevicePlan, padding_free: bool) -> int | None:
    """training.micro_batch_tokens resolved: "auto" splits padding-free batches on a CPU only, by its precision."""
    setting = config.training.micro_batch_tokens
    if setting == "auto":
        return CPU_MICRO_BATCH_TOKENS.get(plan.precision) if plan.device == "cpu" and padding_free else None
    return setting if padding_free else None


def _trainer_class(sft_trainer: type, scorer: TaskScorer | None = None, warn: Callable[[str], None] = print,
                   train_labels: list[str | None] | None = None, micro_batch_tokens: int | None = None, share_prefixes: bool = False,
                   custom_loss: CustomLoss | None = None) -> type:
    """TRL's SFTTrainer with a length-grouped order that survives resuming, or batches that take the labels in
    turn when ``train_labels`` are given (``data.balance_labels``; both in ``sampling.py``), the task metric
    scored at each evaluation when the recipe asks for one (``task_metric.py``) and, on a CPU, the LM head
    applied only where the loss is taken (see ``loss.py``). On a CPU, ``train`` also runs it with attention
    inside each example of a padding-free batch (``attention.py``) and fits the thread count to the cores other
    processes leave free (``threads.py``). ``custom_loss`` (training.loss) takes the training steps' loss."""

    class TogiSFTTrainer(TrainSamplerHook, sft_trainer):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # What TRL's compute_loss records and its log() reports, kept here for compute_loss's own path: token
            # accuracy per batch, and the real (non-padding) tokens trained on so far (see log below).
            self.compact_loss_metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
            self.train_tokens_seen = 0
            self.cut_labels_reported = False

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
                if cut and not self.cut_labels_reported:  # once: it repeats at every evaluation
                    warn(f"step {self.state.global_step}: {cut}")
                    self.cut_labels_reported = True
                collapse = scores.collapse()
                if collapse:
                    warn(f"step {self.state.global_step}: {collapse}; try a lower learning rate, more steps, or full fine-tuning "
                         "(see benchmarks/QUALITY.md)")
            return output

        def train_sampler(self, dataset: Any) -> Any:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            if train_labels is not None:
                return LabelBalancedSampler(train_labels, seed=seed)
            if self.args.train_sampling_strategy != "group_by_length":
                return None  # the Trainer's own order
            lengths = [len(ids) for ids in dataset["input_ids"]]
            # Grouped by the whole step's batch, over every process: the same order on any number of them.
            step_batch = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            return SeededLengthGroupedSampler(lengths, step_batch, seed=seed)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            """On a CPU's padding-free path, a batch is trained in passes of at most ``micro_batch_tokens`` tokens
            (``micro_batches.py``), each with its examples' common prefix once (``shared_prefix.py``). Each pass's
            loss is divided by the labelled tokens of the whole batch (the Trainer's ``num_items_in_batch``), so
            the gradients and the returned loss add up to the whole batch's."""
            sharing = (share_prefixes and attention_implementation(unwrapped_causal_lm(self.model)) == PER_EXAMPLE_SDPA
                       and self._compact_loss_applies(model, inputs, weighted=LABEL_WEIGHTS in inputs))
            pieces = [inputs]
            if micro_batch_tokens and num_items_in_batch is not None and self.model_accepts_loss_kwargs:
                # (without the whole batch's count, the passes' losses would not add up)
                pieces = split_padding_free_batch(inputs, micro_batch_tokens, shared_prefix=shared_prefix_length(inputs) if sharing else 0)
            if sharing:
                pieces = [share_common_prefix(piece) for piece in pieces]
            if len(pieces) == 1:
                return super().training_step(model, pieces[0], num_items_in_batch)
            return sum(super(TogiSFTTrainer, self).training_step(model, piece, num_items_in_batch) for piece in pieces)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            if custom_loss is not None and model.training:
                loss, outputs = custom_loss(model, inputs, num_items_in_batch if self.model_accepts_loss_kwargs else None)
                self._count_trained_tokens(inputs)
                return (loss, outputs) if return_outputs else loss
            label_weights = inputs.pop(LABEL_WEIGHTS, None)  # data.label_loss_weight: only togi's own loss takes them
            if return_outputs or not self._compact_loss_applies(model, inputs, weighted=label_weights is not None):
                if label_weights is not None:
                    raise TogiError("data.label_loss_weight is computed by togi's own loss, which this run cannot use (a loss_type, "
                                    "label smoothing, a mixture-of-experts auxiliary loss, several processes, or a model whose logits "
                                    "are scaled after the head)", "drop data.label_loss_weight for this run")
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            parts = compact_lm_loss(model, inputs, num_items_in_batch, label_weights=label_weights)
            metrics = self.compact_loss_metrics["train" if self.model.training else "eval"]
            metrics["mean_token_accuracy"].append(parts.correct / parts.labelled if parts.labelled else 0.0)
            if self.model.training:
                self._count_trained_tokens(inputs)
            metrics["num_tokens"] = [self.train_tokens_seen]
            return parts.loss

        def _count_trained_tokens(self, inputs: dict[str, Any]) -> None:
            """The real (non-padding) tokens of a training pass, for tokens/s: what TRL's own loss logs as num_tokens."""
            self.train_tokens_seen += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else real_tokens(inputs)
            self.compact_loss_metrics["train"]["num_tokens"] = [self.train_tokens_seen]

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            """compute_loss's own metrics under the names TRL logs its own with (``mean_token_accuracy``, ``num_tokens``;
            ``eval_``-prefixed in evaluation), averaged since the last log, as TRL's log() does."""
            mode = "train" if self.model.training else "eval"
            prefix = "eval_" if mode == "eval" else ""
            logs.update({f"{prefix}{name}": sum(values) / len(values) for name, values in self.compact_loss_metrics[mode].items() if values})
            self.compact_loss_metrics[mode].clear()
            super().log(logs, start_time)

        def _compact_loss_applies(self, model: Any, inputs: dict[str, Any], *, weighted: bool = False) -> bool:
            """On a CPU, for the plain next-token loss, and on any device when the loss is weighted per label token;
            everything else (CUDA, where TRL already projects only the labelled positions; DFT loss, label smoothing,
            MoE auxiliary loss, prompt tuning) keeps TRL's path."""
            args = self.args
            return ((args.device.type == "cpu" or weighted) and args.loss_type == "nll" and self.label_smoother is None
                    and self.compute_loss_func is None and not self.aux_loss_enabled and args.world_size == 1
                    and "labels" in inputs and "shift_labels" not in inputs and supports_compact_loss(model))

    return TogiSFTTrainer


def _trainer_arguments(sft_config_class: type, config: TrainConfig, plan: DevicePlan, run: Run, *, has_val: bool,
                       distributed: dict[str, Any] | None = None) -> Any:
    """SFTConfig for the recipe; ``distributed``: the strategy's arguments on several processes (``distributed.py``)."""
    training, monitoring = config.training, config.monitoring
    virtual_tokens = config.traits.virtual_tokens
    activation_checkpointing = plan.device == "cuda" if training.gradient_checkpointing == "auto" else training.gradient_checkpointing
    if (distributed or {}).get("fsdp_config", {}).get("activation_checkpointing"):
        activation_checkpointing = False  # FSDP checkpoints the blocks itself
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
        # togi's tokenized datasets hold only what the batches need: input_ids, labels, and label_weights
        # (data.label_loss_weight), which the Trainer would otherwise drop as a column the model does not take.
        remove_unused_columns=False,
        **(distributed or {}),
    )
