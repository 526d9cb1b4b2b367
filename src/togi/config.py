"""Recipes: YAML in, validated pydantic objects out, before any model loads.

Every problem is reported with the field's dotted path (``lora.r``), the line of the recipe file where
it is set when it comes from a file, and a hint. Unknown keys are errors, with the closest known key
suggested. Any field can be overridden with ``--set path=value`` (the value is read as YAML).

Defaults follow the seeds: LoRA r=16, alpha=32, dropout 0.05 on all attention and MLP projections;
3 epochs; batch 4 with 4 accumulation steps; learning rate 2e-4 for adapters, 2e-5 for full and
partial fine-tuning; cosine schedule with 10% warm-up; weight decay 0.01; max length 2048.

``task: classification`` trains a sequence-classification head instead of a chat model; its default model
is the embedded text encoder all-MiniLM-L6-v2, and ``classification.freeze_backbone: true`` (method
freeze) trains the new head alone at 1e-3, the seeds' transfer-learning recipe.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError, field_validator, model_validator

from togi.errors import TogiError
from togi.models.embedded import EMBEDDED_MODEL_NAME
from togi.models.encoder import ENCODER_MODEL_NAME

Method = Literal["full", "freeze", "lora", "dora", "qlora", "prompt_tuning", "prefix_tuning"]
Stage = Literal["sft", "dpo", "orpo", "kto", "reward", "rlhf"]
Task = Literal["chat", "classification"]
LORA_PRESETS = ("minimal", "standard", "full")


@dataclass(frozen=True)
class MethodTraits:
    """What a training method is, in the terms the rest of togi asks about. The one table of methods."""

    name: str
    adapter: bool  # the result is a PEFT adapter on the unchanged base, not a whole model
    lora: bool  # low-rank updates that merge into the base weights (LoRA, DoRA, QLoRA)
    virtual_tokens: bool  # learned tokens before the input (prompt and prefix tuning): the inputs change, not the weights
    needs_cuda: bool  # runs on a CUDA GPU only
    preference: bool  # can train the preference stages (dpo, orpo, kto, reward, rlhf)
    classification: bool  # can train a classifier's backbone (task classification without freeze_backbone)


METHODS: dict[str, MethodTraits] = {
    trait.name: trait
    for trait in (
        MethodTraits("full", adapter=False, lora=False, virtual_tokens=False, needs_cuda=False, preference=True, classification=True),
        MethodTraits("freeze", adapter=False, lora=False, virtual_tokens=False, needs_cuda=False, preference=True, classification=False),
        MethodTraits("lora", adapter=True, lora=True, virtual_tokens=False, needs_cuda=False, preference=True, classification=True),
        MethodTraits("dora", adapter=True, lora=True, virtual_tokens=False, needs_cuda=False, preference=True, classification=False),
        MethodTraits("qlora", adapter=True, lora=True, virtual_tokens=False, needs_cuda=True, preference=True, classification=False),
        MethodTraits("prompt_tuning", adapter=True, lora=False, virtual_tokens=True, needs_cuda=False, preference=False, classification=False),
        MethodTraits("prefix_tuning", adapter=True, lora=False, virtual_tokens=True, needs_cuda=False, preference=False, classification=False),
    )
}


def methods_where(**traits: bool) -> tuple[str, ...]:
    """The methods with these traits, in the table's order: ``methods_where(preference=True)``."""
    return tuple(name for name, trait in METHODS.items() if all(getattr(trait, key) == value for key, value in traits.items()))
MIN_LEARNING_RATE, MAX_LEARNING_RATE = 1e-8, 0.1
# training.micro_batch_tokens "auto" on a CPU (benchmarks/RESULTS.md, the demo's memory): where it computes in fp32,
# passes of 512 tokens are faster than one large pass and hold a third of the memory; under bf16 autocast (a CPU with
# native bf16) passes that small cost time, and 1,024-token passes keep the speed of one pass at half its memory.
CPU_MICRO_BATCH_TOKENS = {"fp32": 512, "bf16": 1024}
BUILT_IN_LOSSES = ("label_smoothing", "focal", "contrastive")  # training.loss; togi.train.custom_loss has them


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RecipeRuleError(TogiError, ValueError):
    """A rule across fields, reported at the field it names (``classification.freeze_backbone``) with a hint.
    A ValueError too: pydantic turns only those, raised in a validator, into validation errors."""

    def __init__(self, path: str, problem: str, hint: str) -> None:
        super().__init__(f"{path}: {problem}", hint)
        self.path, self.problem = path, problem


class LoraSettings(_Section):
    r: int = Field(16, gt=0, le=1024, description="rank of the update matrices")
    alpha: float = Field(32, gt=0, description="scaling: the update is multiplied by alpha / r")
    dropout: float = Field(0.05, ge=0, lt=1)
    rslora: bool = Field(False, description="rank-stabilised LoRA: scale the update by alpha / sqrt(r) instead of alpha / r, "
                                            "so a higher rank does not shrink it")
    targets: Union[Literal["minimal", "standard", "full"], list[str]] = Field(
        "full", description="minimal (q, v), standard (q, k, v, o), full (attention + MLP), or module names"
    )
    last_blocks: int | None = Field(None, gt=0, description="adapt only the last N transformer blocks (default: all). The "
                                    "backward pass stops at the first adapted block, so a step costs less: half the blocks "
                                    "is about a third less work")


class FreezeSettings(_Section):
    trainable_blocks: int = Field(2, ge=0, description="train the last N transformer blocks")
    trainable_modules: list[str] = Field(default_factory=list, description="also train parameters whose names contain these, e.g. lm_head, norm")


class VirtualTokenSettings(_Section):
    virtual_tokens: int = Field(20, gt=0, le=512)
    init_text: str | None = Field(None, description="prompt tuning only: initialise the virtual tokens from this text")


class DataSettings(_Section):
    train_file: Path
    val_file: Path | None = None
    val_ratio: float = Field(0.1, ge=0, lt=0.5, description="held out from train_file when there is no val_file")
    format: str | None = None
    encoding: str = "utf-8"
    input_column: str = "question"
    output_column: str = "answer"
    system: str | None = None
    max_length: int = Field(2048, gt=0)
    train_on_prompt: bool = False
    packing: Union[bool, Literal["auto"]] = Field(
        "auto", description="padding-free batches: examples concatenated, never attending to each other; auto: on (on a CPU "
        "attention runs inside each example, see train/attention.py); false: padded batches")
    group_by_length: bool = True
    balance_labels: bool = Field(False, description="batches draw the labels in turn (read with monitoring.label_pattern), so "
                                                    "every batch holds them in equal shares; replaces group_by_length")
    label_loss_weight: float = Field(1.0, ge=1, le=1000, description="the training loss on the label's tokens in each answer (read "
                                     "with monitoring.label_pattern, its first group) counts this many times; 1: every answer token alike")

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str | None) -> str | None:
        from togi.data.formats import FORMATS

        if value is not None and value not in FORMATS:
            raise ValueError(f"unknown format {value!r}; choose one of: {', '.join(FORMATS)}")
        return value


class TrainingSettings(_Section):
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps (overrides epochs)")
    batch_size: int = Field(4, gt=0)
    gradient_accumulation: int = Field(4, gt=0)
    learning_rate: float | None = Field(None, description="default: 2e-4 for adapters, 2e-5 for full and freeze, "
                                        "1e-3 for a classification head on a frozen backbone")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: Union[bool, Literal["auto"]] = "auto"
    auto_batch: bool = Field(False, description="on a GPU out-of-memory error, halve the batch and retry")
    micro_batch_tokens: Union[int, Literal["auto"], None] = Field(
        "auto", description="the most tokens one forward and backward pass takes: a padding-free batch with more is split at "
        "example boundaries and its gradients added up before the optimizer step (the same step, less memory); auto: "
        f"{CPU_MICRO_BATCH_TOKENS['fp32']} on a CPU computing in fp32, {CPU_MICRO_BATCH_TOKENS['bf16']} under bf16 autocast, "
        "no split on a GPU; null: never split")

    loss: str | None = Field(None, description="the training loss in place of cross-entropy: label_smoothing, focal, contrastive "
                             "(a classifier's pairs of texts), or a function of your own as module:function or path/to/file.py:function, "
                             "called as loss(outputs, labels, batch, **loss_options) and returning the batch's mean (see togi.train.custom_loss)")
    loss_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of training.loss, e.g. {smoothing: 0.2}")

    @field_validator("loss")
    @classmethod
    def _loss_reference(cls, value: str | None) -> str | None:
        if value is not None and value not in BUILT_IN_LOSSES and ":" not in value:
            raise ValueError(f"{value!r} is neither a built-in loss ({', '.join(BUILT_IN_LOSSES)}) nor module:function")
        return value

    @model_validator(mode="after")
    def _options_need_a_loss(self) -> TrainingSettings:
        if self.loss_options and self.loss is None:
            raise RecipeRuleError("training.loss_options", "are given, but training.loss names no loss to take them",
                                  f"set training.loss ({', '.join(BUILT_IN_LOSSES)}, or module:function)")
        return self

    @field_validator("micro_batch_tokens", mode="before")
    @classmethod
    def _tokens_auto_or_null(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a number of tokens: use a number such as 1024, auto, or null (never split a batch)") from None
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ValueError(f"{value} tokens: a pass needs at least one token (or auto, or null for never splitting a batch)")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _sane_learning_rate(cls, value: float | None) -> float | None:
        if value is not None and not MIN_LEARNING_RATE <= value <= MAX_LEARNING_RATE:
            raise ValueError(f"{value:g} is outside the sane range [{MIN_LEARNING_RATE:g}, {MAX_LEARNING_RATE:g}]")
        return value


class FsdpSettings(_Section):
    sharding: Literal["full", "hybrid"] = Field("full", description="full: weights, gradients and optimizer state split over every "
                                                "process; hybrid: split within each node, copied across nodes (less traffic between nodes)")
    cpu_offload: bool = Field(False, description="keep the sharded weights and optimizer state in CPU memory between uses (a GPU option)")
    activation_checkpointing: bool = Field(False, description="recompute each block's activations in the backward pass (FSDP's own; "
                                           "use it instead of training.gradient_checkpointing)")


class DeepSpeedSettings(_Section):
    zero_stage: Literal[2, 3] = Field(2, description="2: gradients and optimizer state split over the processes; 3: the weights too")
    offload_optimizer: bool = Field(False, description="optimizer state and step in CPU memory")
    offload_parameters: bool = Field(False, description="ZeRO-3 only: the weights in CPU memory between uses")


class DistributedSettings(_Section):
    """How several processes share the work, when the run has them (``togi train --nproc-per-node N``, or started
    under torchrun or accelerate launch). One process ignores this section."""

    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field("ddp", description="ddp: each process holds the whole model and "
                                                          "gradients are averaged; fsdp: the model is sharded (FSDP2); deepspeed: ZeRO")
    fsdp: FsdpSettings = Field(default_factory=FsdpSettings)
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings)

    @model_validator(mode="after")
    def _options_of_the_strategy(self) -> DistributedSettings:
        for name in ("fsdp", "deepspeed"):
            if self.strategy != name and getattr(self, name) != type(getattr(self, name))():
                raise RecipeRuleError(f"distributed.{name}", f"options are set but distributed.strategy is {self.strategy}",
                                      f"set distributed.strategy: {name}, or drop the distributed.{name} section")
        if self.deepspeed.offload_parameters and self.deepspeed.zero_stage != 3:
            raise RecipeRuleError("distributed.deepspeed.offload_parameters", "needs zero_stage 3: only ZeRO-3 splits the weights",
                                  "set distributed.deepspeed.zero_stage: 3, or offload_optimizer alone")
        return self


class MonitoringSettings(_Section):
    log_every: int = Field(1, gt=0, description="steps between metric records")
    eval_every: int = Field(50, gt=0, description="steps between evaluations on the validation set")
    save_every: int = Field(50, gt=0, description="steps between checkpoints")
    keep_checkpoints: int = Field(2, gt=0, description="the last K checkpoints are kept (and the best, with early stopping)")
    early_stopping_patience: int | None = Field(None, gt=0, description="stop after this many evaluations without improvement")
    report_to: Literal["none", "tensorboard", "wandb", "mlflow"] = "none"
    samples: int = Field(3, ge=0, description="held-out prompts answered by the base and the tuned model at the end")
    eval_metric: Literal["loss", "accuracy", "macro_f1", "exact_match", "rouge_l"] = Field(
        "loss", description="what an evaluation judges the model by: the eval loss, or the task itself, by answering the validation "
        "prompts greedily and scoring the answers (accuracy and macro_f1 read labels with label_pattern); early stopping and the "
        "kept best checkpoint follow it")
    label_pattern: str | None = Field(None, description="a regular expression reading the label from an answer (its first group), "
                                      "e.g. 'ラベル: (\\S+)', for eval_metric accuracy or macro_f1")
    eval_examples: int = Field(64, gt=0, description="validation examples answered at each evaluation for eval_metric")
    eval_max_new_tokens: int | None = Field(None, gt=0, description="the answer limit for eval_metric (default: 1.5x the longest "
                                            "reference answer)")

    @field_validator("label_pattern")
    @classmethod
    def _valid_label_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"{value!r} is not a valid regular expression: {error}") from None
        return value

    @property
    def watches_the_task(self) -> bool:
        return self.eval_metric != "loss"


class PreferenceSettings(_Section):
    beta: float = Field(0.1, gt=0, le=10, description="dpo/orpo/kto: how far the policy may move from the reference")
    loss_type: Literal["sigmoid", "hinge", "ipo"] = Field("sigmoid", description="dpo only")


class RLHFSettings(_Section):
    reward_model: str | None = Field(None, description="a run of stage reward, or a sequence-classification model directory")
    reward_function: str | None = Field(None, description="instead of a model: 'module:function' scoring completions (TRL's signature)")
    num_generations: int = Field(4, ge=2, le=64, description="answers sampled per prompt; their rewards are compared with each other")
    max_new_tokens: int = Field(32, gt=0, le=4096)
    temperature: float = Field(1.0, gt=0, le=2)


class ClassificationSettings(_Section):
    freeze_backbone: bool = Field(False, description="train only the new classification head on the frozen model (transfer "
                                  "learning); sets method to freeze")
    label_pattern: str | None = Field(None, description="chat data: a regular expression reading each example's label from its "
                                      "final answer (its first group), e.g. 'ラベル: (\\S+)'; the text is the user's messages")

    @field_validator("label_pattern")
    @classmethod
    def _valid_pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(f"{value!r} is not a valid regular expression: {error}") from None
        return value


class TrainConfig(_Section):
    """What every recipe has. A recipe is one of three kinds, chosen by its task and stage (``load_config``
    picks the kind before validating, so a section is only known where it means something): ``ChatConfig``
    (supervised fine-tuning of a chat model), ``PreferenceConfig`` (a preference stage: dpo, orpo, kto,
    reward, rlhf) and ``ClassificationConfig`` (a text classifier with a new head)."""

    task: Task = Field("chat", description="chat: a model that answers conversations; classification: a text classifier")
    model: str = EMBEDDED_MODEL_NAME
    method: Method = "lora"
    stage: Stage = Field("sft", description="sft, or a preference stage: dpo, orpo, kto, reward, rlhf")
    output_dir: Path | None = Field(None, description="the run directory (default: runs/<date>-<method>)")
    data: DataSettings
    lora: LoraSettings = Field(default_factory=LoraSettings)
    freeze: FreezeSettings = Field(default_factory=FreezeSettings)
    prompt_tuning: VirtualTokenSettings = Field(default_factory=VirtualTokenSettings)
    prefix_tuning: VirtualTokenSettings = Field(default_factory=VirtualTokenSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    @model_validator(mode="before")
    @classmethod
    def _drop_default_foreign_sections(cls, data: Any) -> Any:
        """Run directories written before recipes had kinds hold every section, at its defaults; those read as absent."""
        if not isinstance(data, dict):
            return data
        foreign = [key for key, (owner, _) in SECTION_OWNERS.items() if key in data and key not in cls.model_fields
                   and isinstance(data[key], dict) and data[key] == owner.model_fields[key].default_factory().model_dump(mode="json")]
        return {key: value for key, value in data.items() if key not in foreign} if foreign else data

    @model_validator(mode="after")
    def _task_metric_fits(self) -> TrainConfig:
        monitoring = self.monitoring
        if monitoring.eval_metric in ("accuracy", "macro_f1") and monitoring.label_pattern is None:
            raise RecipeRuleError("monitoring.label_pattern", f"is needed to score {monitoring.eval_metric}: it reads the label from each answer",
                                  "for example label_pattern: 'ラベル: (\\S+)'")
        if self.data.balance_labels and monitoring.label_pattern is None:
            raise RecipeRuleError("data.balance_labels", "needs monitoring.label_pattern to read each training example's label",
                                  "for example monitoring.label_pattern: 'ラベル: (\\S+)'")
        if self.data.label_loss_weight != 1:
            if monitoring.label_pattern is None:
                raise RecipeRuleError("data.label_loss_weight", "needs monitoring.label_pattern to find the label's tokens in each answer",
                                      "for example monitoring.label_pattern: 'ラベル: (\\S+)'")
            if not isinstance(self, ChatConfig) or self.traits.virtual_tokens:
                raise RecipeRuleError("data.label_loss_weight", f"weights the next-token loss of supervised fine-tuning, not {self.task} "
                                      f"{self.stage} training with method {self.method}", "drop it, or train with stage sft and a method "
                                      "that changes the model's weights (lora, dora, full, freeze, ...)")
        if self.training.loss is not None and (isinstance(self, PreferenceConfig) or self.traits.virtual_tokens):
            raise RecipeRuleError("training.loss", f"replaces the loss of supervised fine-tuning or of a classifier, not of {self.task} "
                                  f"{self.stage} training with method {self.method}", "drop it, or train with stage sft and a method that "
                                  "changes the model's weights (lora, dora, full, freeze, ...)")
        if self.training.loss is not None and self.data.label_loss_weight != 1:
            raise RecipeRuleError("data.label_loss_weight", "weights togi's own next-token loss, which training.loss replaces",
                                  "weigh the label's tokens inside your loss, or drop one of the two")
        if self.training.loss == "contrastive" and self.task != "classification":
            raise RecipeRuleError("training.loss", "contrastive compares pairs of texts by a classifier's outputs",
                                  "train task classification, or choose label_smoothing or focal for a chat model")
        if monitoring.watches_the_task and not isinstance(self, ChatConfig):
            raise RecipeRuleError("monitoring.eval_metric", f"scores generated answers, which {self.task} {self.stage} training does not give",
                                  "drop eval_metric (a classifier reports accuracy and macro-F1 at each evaluation already)")
        if monitoring.watches_the_task and monitoring.save_every % monitoring.eval_every:
            raise RecipeRuleError("monitoring.save_every", f"is {monitoring.save_every}, not a multiple of eval_every ({monitoring.eval_every})",
                                  "the best checkpoint by eval_metric is kept, so checkpoints must fall on evaluations: "
                                  f"set save_every: {monitoring.eval_every}")
        return self

    @property
    def traits(self) -> MethodTraits:
        return METHODS[self.method]

    @property
    def learning_rate(self) -> float:
        if self.training.learning_rate is not None:
            return self.training.learning_rate
        if self.traits.virtual_tokens:
            return 3e-3  # virtual tokens start far from useful values and need larger steps
        if self.task == "classification" and self.method == "freeze":
            return 1e-3  # a new head on frozen features learns from scratch (the seeds' transfer-learning rate)
        adapters = self.traits.adapter
        if self.stage in ("dpo", "orpo", "kto"):  # the seed's 5e-7 is for full training of 7B models; adapters need more
            return 5e-5 if adapters else 5e-7
        if self.stage == "reward":
            return 1e-4 if adapters else 1e-5
        if self.stage == "rlhf":
            return 1e-5 if adapters else 1e-6
        return 2e-4 if adapters else 2e-5

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


class ChatConfig(TrainConfig):
    """Supervised fine-tuning of a chat model (task chat, stage sft): the default kind."""

    distributed: DistributedSettings = Field(default_factory=DistributedSettings)

    @model_validator(mode="after")
    def _is_chat_sft(self) -> ChatConfig:
        if self.task != "chat" or self.stage != "sft":  # only reached when built directly, not through load_config
            raise RecipeRuleError("task", f"a ChatConfig is task chat, stage sft, not {self.task} {self.stage}", "use load_config")
        if self.distributed.fsdp.activation_checkpointing and self.training.gradient_checkpointing is True:
            raise RecipeRuleError("distributed.fsdp.activation_checkpointing", "and training.gradient_checkpointing both recompute "
                                  "activations; FSDP takes only its own", "drop training.gradient_checkpointing under strategy fsdp")
        return self


class PreferenceConfig(TrainConfig):
    """A preference stage on a chat model: dpo, orpo, kto, a reward model, or rlhf against one."""

    preference: PreferenceSettings = Field(default_factory=PreferenceSettings)
    rlhf: RLHFSettings = Field(default_factory=RLHFSettings)
    distributed: DistributedSettings = Field(default_factory=DistributedSettings)

    @model_validator(mode="after")
    def _stage_fits(self) -> PreferenceConfig:
        if self.task != "chat" or self.stage == "sft":
            raise RecipeRuleError("stage", f"a PreferenceConfig is a preference stage of a chat model, not {self.task} {self.stage}", "use load_config")
        if not self.traits.preference:
            raise RecipeRuleError("method", f"stage {self.stage} trains with {', '.join(methods_where(preference=True))}, not {self.method}",
                                  "set method: lora (or another of those)")
        if self.stage == "rlhf" and not (self.rlhf.reward_model or self.rlhf.reward_function):
            raise RecipeRuleError("rlhf.reward_model", "stage rlhf needs a reward: rlhf.reward_model (a run of stage reward) or "
                                  "rlhf.reward_function ('module:function')", "train a reward model first with stage: reward")
        return self


class ClassificationConfig(TrainConfig):
    """A text classifier: a new head on a model's states (task classification). Starts from the embedded text encoder."""

    model: str = ENCODER_MODEL_NAME
    classification: ClassificationSettings = Field(default_factory=ClassificationSettings)

    @model_validator(mode="before")
    @classmethod
    def _frozen_backbone_is_method_freeze(cls, data: Any) -> Any:
        settings = data.get("classification") if isinstance(data, dict) else None
        if isinstance(settings, dict) and settings.get("freeze_backbone") is True:
            data = {**data, "method": data.get("method", "freeze")}
        return data

    @model_validator(mode="after")
    def _classifier_fits(self) -> ClassificationConfig:
        if self.classification.freeze_backbone and self.method != "freeze":
            raise RecipeRuleError("classification.freeze_backbone", f"trains the head alone, but method is {self.method}",
                                  "drop method (freeze_backbone sets it to freeze), or set freeze_backbone: false to train with full or lora")
        if not self.classification.freeze_backbone and not self.traits.classification:
            raise RecipeRuleError("method", f"task classification trains with {' or '.join(methods_where(classification=True))}, not {self.method}",
                                  "set method: full or lora, or classification.freeze_backbone: true to train only the head")
        if self.stage != "sft":
            raise RecipeRuleError("stage", f"task classification has no {self.stage} stage", "drop stage from the recipe")
        if self.model.lower().endswith(".gguf"):
            raise RecipeRuleError("model", "a classifier cannot start from a .gguf file", "use a model directory, a hub id or all-MiniLM-L6-v2")
        return self


# The sections only one kind of recipe has: the kind, and what a recipe sets to be of it.
SECTION_OWNERS: dict[str, tuple[type[TrainConfig], str]] = {
    "classification": (ClassificationConfig, "task: classification"),
    "preference": (PreferenceConfig, "a preference stage (stage: dpo, orpo, kto, reward or rlhf)"),
    "rlhf": (PreferenceConfig, "stage: rlhf"),
    "distributed": (ChatConfig, "task: chat (a chat model's training, not a classifier's, runs on several processes)"),
}
RECIPE_KINDS: dict[str, type[TrainConfig]] = {"chat": ChatConfig, "preference": PreferenceConfig, "classification": ClassificationConfig}
RECIPE_DESCRIPTIONS: dict[type[TrainConfig], str] = {ChatConfig: "supervised fine-tuning of a chat model (task chat, stage sft)",
                                                     PreferenceConfig: "a preference stage of a chat model",
                                                     ClassificationConfig: "a classifier (task classification)"}


def recipe_kind(data: Any) -> str:
    """Which kind of recipe a mapping is: classification by its task, else preference for any stage but sft."""
    if isinstance(data, TrainConfig):
        return next(kind for kind, model in RECIPE_KINDS.items() if isinstance(data, model))
    if not isinstance(data, dict):
        return "chat"
    if data.get("task") == "classification":
        return "classification"
    return "chat" if data.get("stage", "sft") == "sft" else "preference"


_RECIPE = TypeAdapter(Annotated[Union[tuple(Annotated[model, Tag(kind)] for kind, model in RECIPE_KINDS.items())],  # type: ignore[misc]
                                Discriminator(recipe_kind)])


def validate_recipe(data: dict[str, Any]) -> TrainConfig:
    """A recipe mapping as the config of its kind. Raises pydantic's ValidationError; ``load_config`` explains it."""
    return _RECIPE.validate_python(data)


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str
    hint: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message} (hint: {self.hint})"


class ConfigError(TogiError):
    """A recipe with problems: each issue names its field, its line in the recipe file where there is one, and a hint."""

    def __init__(self, source: str, issues: list[ConfigIssue], what: str = "recipe") -> None:
        self.what = what  # the kind of file: a recipe, or togi tune's search space
        super().__init__(f"{source}: " + "; ".join(str(issue) for issue in issues),
                         issues[0].hint if len(issues) == 1 else "each issue names its field and its own hint")
        self.source = source
        self.issues = issues


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """``lora.r=32`` sets data["lora"]["r"] = 32; the value is read as YAML (numbers, booleans, lists)."""
    if "=" not in assignment:
        raise ConfigError("--set", [ConfigIssue(assignment, "an override needs the form path=value", "e.g. --set lora.r=32")])
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    target = data
    for key in keys[:-1]:
        if not isinstance(target.get(key), dict):
            target[key] = {}
        target = target[key]
    target[keys[-1]] = value


def load_config(path: Path | str | None = None, overrides: list[str] = (), base: dict[str, Any] | None = None) -> TrainConfig:
    """Read a recipe (optional), apply ``--set`` overrides, validate. Raises ConfigError naming each field."""
    source = str(path) if path else "command line"
    text = ""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(source, [ConfigIssue("recipe", "no such file", "check the path of the recipe YAML")])
        text = path.read_text(encoding="utf-8")
        try:
            loaded = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", error)
            hint = "check indentation and quoting"
            if problem == "mapping values are not allowed here":
                hint = "a value with ': ' inside must be quoted, e.g. label_pattern: 'ラベル: (\\S+)'"
            raise ConfigError(source, [ConfigIssue("recipe", f"invalid YAML: {problem}", hint, line=mark.line + 1 if mark else None)]) from None
        if not isinstance(loaded, dict):
            raise ConfigError(source, [ConfigIssue("recipe", "the recipe must be a mapping of keys to values", "see examples/recipes/")])
        data = _merge(data, loaded)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return validate_recipe(data)
    except ValidationError as error:
        kind = RECIPE_KINDS[recipe_kind(data)]
        raise ConfigError(source, [_issue(item, text, kind) for item in error.errors()]) from None


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _issue(error: dict[str, Any], text: str, recipe: type[TrainConfig]) -> ConfigIssue:
    location = [str(part) for part in error["loc"] if not str(part).startswith(("function-after", "literal["))]
    if location and location[0] in RECIPE_KINDS:  # the union's tag: which kind of recipe was validated
        location = location[1:]
    path = ".".join(location) or "recipe"
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ")
    hint = "see the recipe reference in README.md"
    if kind == "extra_forbidden" and len(location) == 1 and location[0] in SECTION_OWNERS:
        _, setting = SECTION_OWNERS[location[0]]
        message = f"is for {setting}, but this recipe is {RECIPE_DESCRIPTIONS[recipe]}"
        hint = f"add {setting} to the recipe, or drop the {location[0]} section"
    elif kind == "extra_forbidden":
        message = "unknown key"
        section = _section_model(location[:-1], recipe)
        alias = KEY_ALIASES.get(location[-1])
        close = [alias] if section and alias in section.model_fields else (
            difflib.get_close_matches(location[-1], list(section.model_fields), n=1) if section else [])
        hint = f"did you mean {'.'.join(location[:-1] + close)!r}?" if close else (
            f"known keys here: {', '.join(section.model_fields)}" if section else hint)
    elif isinstance((error.get("ctx") or {}).get("error"), RecipeRuleError):
        rule = error["ctx"]["error"]
        path, message, hint, location = rule.path, rule.problem, rule.hint, rule.path.split(".")
    elif kind == "missing":
        hint = "add it to the recipe, or pass it on the command line"
        if path == "data":
            message, hint = "no training data", "set data.train_file (or pass --data FILE)"
    elif "learning_rate" in path:
        hint = "typical values: 2e-4 for LoRA, 2e-5 for full fine-tuning"
    elif kind in _BOUNDS:
        limit = next(iter((error.get("ctx") or {}).values()), "")
        hint = f"set {path} to a number {_BOUNDS[kind]} {limit}"
    elif kind.startswith("literal_error"):
        hint = "use one of the values listed"
    elif kind == "string_type" and isinstance(error.get("input"), dict) and len(error["input"]) == 1:
        # YAML reads an unquoted `a: b` as a mapping; label patterns such as ラベル: (\S+) meet this first
        key, value = next(iter(error["input"].items()))
        message = f"YAML read {key}: {value} as a mapping, because of the ': ' inside it"
        hint = f"quote the value: {location[-1]}: '{key}: {value}' in a recipe, or --set \"{path}='{key}: {value}'\""
    elif kind.endswith(("_type", "_parsing")):
        hint = f"check the type of {path}: {message.lower()}"
    return ConfigIssue(path=path, message=message, hint=hint, line=yaml_key_line(text, location))


# Names other tools (TRL, PEFT, Axolotl, LLaMA-Factory) use for togi's keys.
KEY_ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target_modules": "targets",
    "lora_target": "targets", "lr": "learning_rate", "num_epochs": "epochs", "num_train_epochs": "epochs",
    "per_device_train_batch_size": "batch_size", "micro_batch_size": "batch_size",
    "gradient_accumulation_steps": "gradient_accumulation", "max_seq_length": "max_length", "sequence_len": "max_length",
    "cutoff_len": "max_length", "lr_scheduler_type": "scheduler", "lr_scheduler": "scheduler", "base_model": "model",
    "model_name_or_path": "model", "finetuning_type": "method", "dataset": "train_file",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


def _section_model(location: list[str], recipe: type[TrainConfig]) -> type[BaseModel] | None:
    model: type[BaseModel] = recipe
    for part in location:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def yaml_key_line(text: str, location: list[str]) -> int | None:
    """The 1-based line of a key path in the recipe's YAML, when the recipe sets it."""
    if not text:
        return None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in location:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((key, value) for key, value in node.value if key.value == part), None)
        if match is None:
            break
        line, node = match[0].start_mark.line + 1, match[1]
    return line
