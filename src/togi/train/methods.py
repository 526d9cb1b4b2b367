"""Fine-tuning methods: which parameters train, built on PEFT (no hand-written adapter layers).

LoRA target presets are resolved from the model's own modules rather than hard-coded Llama names:
the transformer blocks are the model's longest ``ModuleList`` of identical blocks, and the linear
layers inside the first block are sorted into attention (query, key, value, output, or a fused
projection) and MLP layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from togi.config import ConfigError, ConfigIssue, TrainConfig

if TYPE_CHECKING:
    from pathlib import Path

    from togi.models.resolve import ModelSource

_QUERY = ("q_proj", "query", "q_lin", "wq", "q")
_VALUE = ("v_proj", "value", "v_lin", "wv", "v")
_FUSED_QKV = ("qkv_proj", "query_key_value", "c_attn", "wqkv", "w_pack", "qkv")
_ATTENTION_CONTAINERS = ("attn", "attention")


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    total: int

    def __str__(self) -> str:
        # The line PEFT's print_trainable_parameters prints, for every method alike.
        return f"trainable params: {self.trainable:,} || all params: {self.total:,} || trainable%: {100 * self.trainable / self.total:.4f}"


def count_parameters(model: nn.Module) -> ParameterCount:
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT counts 4-bit weights at their real size
        trainable, total = model.get_nb_trainable_parameters()
        return ParameterCount(trainable=trainable, total=total)
    return ParameterCount(trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
                          total=sum(p.numel() for p in model.parameters()))


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks: its longest ModuleList of modules of one class."""
    candidates = [module for module in model.modules()
                  if isinstance(module, nn.ModuleList) and len(module) > 0 and len({type(block) for block in module}) == 1]
    if not candidates:
        raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")
    return max(candidates, key=len)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ in ("Conv1D", "Linear4bit", "Linear8bitLt")


def block_linear_layers(model: nn.Module) -> list[str]:
    """Paths of the linear layers inside one transformer block, e.g. ``self_attn.q_proj``."""
    block = transformer_blocks(model)[0]
    return [name for name, module in block.named_modules() if name and _is_linear(module)]


def lora_target_modules(model: nn.Module, targets: str | list[str]) -> list[str]:
    """PEFT ``target_modules`` for a preset or an explicit list, checked against the model."""
    layers = block_linear_layers(model)
    leaf_names = sorted({path.rsplit(".", 1)[-1] for path in layers})
    if isinstance(targets, list):
        all_leaf_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if _is_linear(module)}
        unknown = [name for name in targets if name.rsplit(".", 1)[-1] not in all_leaf_names]
        if unknown:
            raise ConfigError("recipe", [ConfigIssue("lora.targets", f"this model has no linear layer named {', '.join(map(repr, unknown))}",
                                                     f"its blocks have: {', '.join(leaf_names)}; or use minimal, standard, full")])
        return targets
    attention = sorted({path.rsplit(".", 1)[-1] for path in layers if any(part in path.lower() for part in _ATTENTION_CONTAINERS)})
    if targets == "full":
        return leaf_names
    if targets == "standard":
        return attention or leaf_names
    fused = [name for name in attention if name.lower() in _FUSED_QKV]
    minimal = [name for name in attention if name.lower() in _QUERY + _VALUE]
    return minimal or fused or attention


def lora_config(model: nn.Module, config: TrainConfig, task_type: str, modules_to_save: list[str] | None = None) -> Any:
    """The PEFT ``LoraConfig`` of a recipe's lora section, for LoRA, DoRA and QLoRA alike: the target
    preset resolved against the model, restricted to its last ``lora.last_blocks`` blocks when set."""
    import peft

    settings = config.lora
    targets: list[str] = lora_target_modules(model, settings.targets)
    if settings.last_blocks is not None:
        targets = _in_last_blocks(model, targets, settings.last_blocks)
    return peft.LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, use_rslora=settings.rslora,
                           use_dora=config.method == "dora", target_modules=targets, modules_to_save=modules_to_save,
                           bias="none", task_type=task_type)


def _in_last_blocks(model: nn.Module, targets: list[str], count: int) -> list[str]:
    """The full names of the target layers inside the model's last ``count`` transformer blocks."""
    blocks = transformer_blocks(model)
    if count > len(blocks):
        raise ConfigError("recipe", [ConfigIssue("lora.last_blocks", f"the model has only {len(blocks)} blocks",
                                                 f"use a number from 1 to {len(blocks)}, or leave it out to adapt every block")])
    kept = {id(block) for block in list(blocks)[len(blocks) - count :]}
    prefixes = tuple(name + "." for name, module in model.named_modules() if id(module) in kept)
    leaf_names = {target.rsplit(".", 1)[-1] for target in targets}
    return [name for name, module in model.named_modules()
            if _is_linear(module) and name.startswith(prefixes) and name.rsplit(".", 1)[-1] in leaf_names]


def check_method_fits(config: TrainConfig, source: ModelSource) -> None:
    """Raise ConfigError if the method's settings do not fit the model (a LoRA target it lacks, more
    frozen blocks than it has), using a weightless skeleton so nothing heavy loads first."""
    if not (config.traits.lora or config.method == "freeze"):
        return
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(source.directory, gguf_file=source.gguf_file)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(model_config)
    if config.method == "freeze":
        _freeze_all_but(skeleton, config)
    else:
        lora_config(skeleton, config, "CAUSAL_LM")


def apply_method(model: nn.Module, config: TrainConfig, model_dir: Path | str) -> nn.Module:
    """Set which parameters train; wrap in a PEFT model for adapter methods."""
    method = config.method
    if method == "full":
        for parameter in model.parameters():
            parameter.requires_grad = True
        return model
    if method == "freeze":
        return _freeze_all_but(model, config)
    import peft

    if config.traits.lora:
        if config.traits.needs_cuda:  # 4-bit weights (QLoRA)
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.training.gradient_checkpointing is not False)
        peft_config = lora_config(model, config, peft.TaskType.CAUSAL_LM)
        if config.method == "lora" and next(model.parameters()).device.type == "cpu":
            from togi.train.cpu_lora import use_cpu_lora_layers

            use_cpu_lora_layers(peft_config)  # PEFT's LoRA layers with a faster, smaller training step on a CPU
    elif method == "prompt_tuning":
        settings = config.prompt_tuning
        peft_config = peft.PromptTuningConfig(
            task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=settings.virtual_tokens,
            prompt_tuning_init=peft.PromptTuningInit.TEXT if settings.init_text else peft.PromptTuningInit.RANDOM,
            prompt_tuning_init_text=settings.init_text, tokenizer_name_or_path=str(model_dir) if settings.init_text else None,
        )
    else:
        peft_config = peft.PrefixTuningConfig(task_type=peft.TaskType.CAUSAL_LM, num_virtual_tokens=config.prefix_tuning.virtual_tokens)
    return peft.get_peft_model(model, peft_config)


def _freeze_all_but(model: nn.Module, config: TrainConfig) -> nn.Module:
    settings = config.freeze
    for parameter in model.parameters():
        parameter.requires_grad = False
    blocks = transformer_blocks(model)
    if settings.trainable_blocks > len(blocks):
        raise ConfigError("recipe", [ConfigIssue("freeze.trainable_blocks", f"the model has only {len(blocks)} blocks",
                                                 f"use a number from 1 to {len(blocks)}")])
    for block in list(blocks)[len(blocks) - settings.trainable_blocks :]:
        for parameter in block.parameters():
            parameter.requires_grad = True
    named = dict(model.named_parameters(remove_duplicate=False))  # tied weights answer to both names
    for pattern in settings.trainable_modules:
        matches = [name for name in named if pattern in name]
        if not matches:
            raise ConfigError("recipe", [ConfigIssue("freeze.trainable_modules", f"no parameter name contains {pattern!r}",
                                                     "use part of a parameter name, e.g. lm_head, norm, embed_tokens")])
        for name in matches:
            named[name].requires_grad = True
    if not any(parameter.requires_grad for parameter in model.parameters()):
        raise ConfigError("recipe", [ConfigIssue("freeze", "nothing is left to train", "set trainable_blocks above 0 or name trainable_modules")])
    return model

