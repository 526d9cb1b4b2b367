"""Preference and RL stages, on TRL's own trainers: ``stage: dpo | orpo | kto | reward | rlhf`` in a recipe.

- ``dpo``: TRL's DPOTrainer; ``preference.loss_type`` sigmoid, hinge or ipo; ``preference.beta`` 0.1.
  With LoRA the reference model is the base with the adapter switched off, so it costs no memory.
- ``orpo``: ORPO (TRL ships it under ``trl.experimental``): SFT and an odds-ratio preference term in one
  loss, with no reference model.
- ``kto``: TRL's KTOTrainer on unpaired examples (a preference pair gives one desirable and one undesirable).
- ``reward``: a sequence-classification head (one score) trained on preference pairs with TRL's RewardTrainer.
- ``rlhf``: online optimisation with TRL's GRPOTrainer against a reward model (a ``reward`` run) or a
  reward function. TRL 1.x ships GRPO and RLOO and no longer ships PPO, so togi's RLHF stage is GRPO.

Every stage reads both preference formats (TRL pairs and OpenAI DPO, or KTO rows), writes the same run
directory as SFT (``togi.runs``) with its own logged values in stage_metrics.jsonl, and resumes from its last
checkpoint as SFT does (``togi.train.session``).

Default learning rates (``training.learning_rate`` overrides): dpo/orpo/kto 5e-5 with adapters and
5e-7 for full training (the seed's value for 7B-class models); reward 1e-4 / 1e-5; rlhf 1e-5 / 1e-6.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

from togi.config import TrainConfig
from togi.data.examples import ChatExample, ExampleKind, KTOExample, PreferenceExample
from togi.data.formats import load_dataset
from togi.errors import TogiError
from togi.models.device import DevicePlan
from togi.models.loading import load_causal_lm
from togi.models.resolve import load_tokenizer, resolve_model
from togi.runs import Run
from togi.train.result import RunResult
from togi.train.callbacks import MetricsRecorder
from togi.train.distributed import strategy_arguments, transformer_layer_classes
from togi.train.methods import apply_method, count_parameters, lora_config
from togi.train.session import TrainingSession


class StageDataError(TogiError):
    """The stage's data, or its reward function, is not what the stage needs."""

    hint = "see the stage's data formats in `togi data convert --help`"
    work_failed = True


def _messages(messages: list[Any]) -> list[dict[str, Any]]:
    return [message.to_template_dict() for message in messages]


def preference_rows(path: Path, stage: str) -> list[dict[str, Any]]:
    """The file's examples in TRL's conversational form for ``stage``."""
    dataset = load_dataset(path)
    if dataset.kind is ExampleKind.PREFERENCE:
        pairs = [e for e in dataset.examples if isinstance(e, PreferenceExample)]
        if stage == "kto":
            return [row for e in pairs for row in (
                {"prompt": _messages(e.prompt), "completion": _messages(e.chosen), "label": True},
                {"prompt": _messages(e.prompt), "completion": _messages(e.rejected), "label": False})]
        if stage == "rlhf":
            return [{"prompt": _messages(e.prompt)} for e in pairs]
        return [{"prompt": _messages(e.prompt), "chosen": _messages(e.chosen), "rejected": _messages(e.rejected)} for e in pairs]
    if dataset.kind is ExampleKind.KTO and stage == "kto":
        return [{"prompt": _messages(e.prompt_messages), "completion": _messages([m for m in e.messages if m.role == "assistant"][-1:]),
                 "label": e.label} for e in dataset.examples if isinstance(e, KTOExample)]
    if dataset.kind is ExampleKind.CHAT and stage == "rlhf":
        return [{"prompt": _messages(e.prompt_messages)} for e in dataset.examples if isinstance(e, ChatExample)]
    raise StageDataError(f"{path} holds {dataset.kind.value} examples; stage {stage} needs "
                         + ("preference pairs or KTO rows" if stage == "kto" else "prompts (chat or preference data)" if stage == "rlhf"
                            else "preference pairs (prompt/chosen/rejected, or OpenAI's DPO format)"),
                         "see the stage's data formats in `togi data convert --help`")


def _common_arguments(config: TrainConfig, plan: DevicePlan, run: Run, has_val: bool) -> dict[str, Any]:
    training, monitoring = config.training, config.monitoring
    return dict(
        output_dir=str(run.checkpoints_dir), num_train_epochs=training.epochs, max_steps=training.max_steps or -1,
        per_device_train_batch_size=training.batch_size, per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.gradient_accumulation, learning_rate=config.learning_rate,
        lr_scheduler_type=training.scheduler, warmup_steps=training.warmup_ratio, weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm, seed=training.seed, data_seed=training.seed,
        bf16=plan.precision == "bf16", fp16=plan.precision == "fp16", use_cpu=plan.device == "cpu",
        logging_steps=monitoring.log_every, logging_nan_inf_filter=False,  # the health guard must see a NaN loss
        eval_strategy="steps" if has_val else "no", eval_steps=monitoring.eval_every,
        save_strategy="steps", save_steps=monitoring.save_every, save_total_limit=monitoring.keep_checkpoints,
        report_to=[] if monitoring.report_to == "none" else [monitoring.report_to], disable_tqdm=True, dataloader_num_workers=0,
    )


class StageLog(MetricsRecorder):
    """metrics.jsonl as for SFT, plus every value the stage's trainer logs (reward margins, accuracies, rewards)."""

    def __init__(self, run: Run) -> None:
        super().__init__(run.metrics_path, run.plot_path)
        self.stage_metrics_path = run.stage_metrics_path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        super().on_log(args, state, control, logs=logs, **kwargs)
        if logs and "train_runtime" not in logs:
            with self.stage_metrics_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def load_reward_function(reference: str) -> Callable[..., list[float]]:
    module_name, _, function_name = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise StageDataError(f"rlhf.reward_function {reference!r} cannot be imported ({error}); give it as 'module:function'",
                             "the module must be importable where togi runs (on PYTHONPATH)") from None


def _reward_model(reference: str) -> Any:
    from transformers import AutoModelForSequenceClassification

    if Run.is_run(reference):  # a run of stage reward
        return Run.open(reference).load_trained_model()[0]
    path = Path(reference)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForSequenceClassification

        return AutoPeftModelForSequenceClassification.from_pretrained(path, num_labels=1).merge_and_unload().eval()
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()


def train_stage(config: TrainConfig, *, resume_dir: Path | str | None = None, console: Any = None, log: Callable[[str], None] = print,
                callbacks: Sequence[Any] = ()) -> RunResult:
    """Run one preference or RL stage as the config says (see ``togi.train.train`` for the arguments)."""
    import peft
    from transformers import AutoModelForSequenceClassification, set_seed

    stage = config.stage
    session = TrainingSession.open(config, resume_dir=resume_dir, console=console, log=log, callbacks=callbacks)
    run, plan, log = session.run, session.plan, session.log  # silent on every process but the main one
    rows = preference_rows(config.data.train_file, stage)
    val_rows = preference_rows(config.data.val_file, stage) if config.data.val_file else []
    fingerprints = session.fingerprint_data()
    source = resolve_model(config.model, log)
    tokenizer = load_tokenizer(config.model, log)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    set_seed(config.training.seed)
    arguments = _common_arguments(config, plan, run, has_val=bool(val_rows))
    beta = config.preference.beta

    if stage == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(source.directory, num_labels=1, dtype=plan.weights_dtype)
        model.config.pad_token_id = tokenizer.pad_token_id
        if config.traits.lora:
            model = peft.get_peft_model(model, lora_config(model, config, peft.TaskType.SEQ_CLS))
    else:
        model = apply_method(load_causal_lm(source, plan), config, source.directory)
    arguments.update(strategy_arguments(config, session.processes, plan.device, plan.precision, run.path, transformer_layer_classes(model)))

    if stage == "reward":
        from trl import RewardConfig, RewardTrainer

        trainer_class, args, extra = RewardTrainer, RewardConfig(**arguments), {}
    elif stage == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer_class, args, extra = DPOTrainer, DPOConfig(**arguments, beta=beta, loss_type=[config.preference.loss_type]), {}
    elif stage == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer_class, args, extra = ORPOTrainer, ORPOConfig(**arguments, beta=beta), {}
    elif stage == "kto":
        from trl import KTOConfig, KTOTrainer

        trainer_class, args, extra = KTOTrainer, KTOConfig(**arguments, beta=beta), {}
    else:
        from trl import GRPOConfig, GRPOTrainer

        settings = config.rlhf
        reward = _reward_model(settings.reward_model) if settings.reward_model else load_reward_function(settings.reward_function or "")
        arguments["per_device_train_batch_size"] = max(config.training.batch_size, settings.num_generations)
        trainer_class = GRPOTrainer
        args = GRPOConfig(**arguments, num_generations=settings.num_generations, max_completion_length=settings.max_new_tokens,
                          temperature=settings.temperature)
        extra = {"reward_funcs": [reward]}
    parameters = count_parameters(model)
    log(f"stage {stage}: {len(rows)} training rows; {parameters}")

    session.start(stage=stage, parameters=str(parameters), chat_template_text=tokenizer.chat_template, eos_token=tokenizer.eos_token,
                  data={**fingerprints, "train_examples": len(rows), "val_examples": len(val_rows)})
    from datasets import Dataset

    # No early stopping: the stages' arguments keep no best checkpoint to return to.
    trainer = trainer_class(model=model, args=args, train_dataset=Dataset.from_list(rows),
                            eval_dataset=Dataset.from_list(val_rows) if val_rows else None, processing_class=tokenizer,
                            callbacks=session.callbacks(has_val=bool(val_rows), recorder=StageLog(run), early_stopping=False), **extra)
    output = session.train(trainer)
    trainer.save_model(str(session.output_dir))  # every process joins: FSDP gathers the whole weights on rank 0
    if session.main:
        tokenizer.save_pretrained(str(session.output_dir))
    return session.finish(trainer, output, parameters=parameters)


def pair_margins(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> list[float]:
    """Per pair: log p(chosen) - log p(rejected), each summed over the answer's tokens given the prompt."""
    import torch

    def answer_log_probability(prompt: list[dict[str, Any]], answer: list[dict[str, Any]]) -> float:
        prefix = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        prefix_length = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(full, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        picked = log_probs.gather(1, ids[0, 1:, None])[:, 0]
        return float(picked[prefix_length - 1:].sum())

    return [answer_log_probability(r["prompt"], r["chosen"]) - answer_log_probability(r["prompt"], r["rejected"]) for r in rows]


def score_pairs(model: Any, reference: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> dict[str, float]:
    """DPO's own measures on ``rows``: the mean implicit reward margin of ``model`` over ``reference``
    ((log p - log p_ref)(chosen) - (log p - log p_ref)(rejected)) and the preference accuracy, the share of
    pairs where that margin is positive."""
    margins = [tuned - base for tuned, base in zip(pair_margins(model, tokenizer, rows), pair_margins(reference, tokenizer, rows))]
    return {"margin": sum(margins) / len(margins), "accuracy": sum(m > 0 for m in margins) / len(margins)}


def score_with_reward_model(model: Any, tokenizer: Any, rows: list[dict[str, Any]]) -> float:
    """The share of pairs whose chosen answer the reward model scores above the rejected one."""
    import torch

    def score(prompt: list[dict[str, Any]], answer: list[dict[str, Any]]) -> float:
        text = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        with torch.no_grad():
            return float(model(**tokenizer(text, return_tensors="pt", add_special_tokens=False)).logits[0, 0])

    return sum(score(r["prompt"], r["chosen"]) > score(r["prompt"], r["rejected"]) for r in rows) / len(rows)
