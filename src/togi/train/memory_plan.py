"""``togi estimate``: the peak memory a recipe needs on each device, before anything loads.

The model is built from its config.json alone, on the meta device (no weights), and the recipe's method is applied
to it, so that the parameter counts are exact for any architecture: all, trainable, and those QLoRA stores in 4 bits.
Memory per device is then the sum of:

- weights: 4 bytes a parameter on a CPU (bf16 there is autocast over float32 weights), the compute type (2 bytes)
  on a GPU, NF4 for QLoRA's linear layers (0.5 byte, plus about 1/32 byte of double-quantized scales);
- gradients and AdamW's two moments for the trainable parameters, in their own type (PEFT keeps adapter weights in
  float32; a full fine-tune on a GPU trains bf16 weights with bf16 moments, as transformers' Trainer does);
- activations kept for the backward pass: per token and block about 8 hidden + 4 intermediate + 2 key/value values
  (attention by SDPA or flash: no sequence-squared term), or only each block's input with gradient checkpointing,
  plus one block's recomputation; LoRA dropout's kept inputs and masks; and the logits of the tokens in a pass, in
  float32 for the loss, with gradient;
- sharding: DDP holds everything on every device plus a bucket copy of the gradients; FSDP full shard and ZeRO-3
  split weights, gradients and optimizer state over the devices; ZeRO-2 splits gradients and optimizer state;
  offload moves the optimizer state (and ZeRO-3's weights) to CPU memory;
- the process itself: on a CPU the interpreter with torch, transformers and PEFT imported (``PROCESS_BASELINE``); on a
  GPU nothing (torch's allocator peak, as ``torch.cuda.max_memory_allocated`` reports it: the CUDA context, about
  0.5 GB more, is outside it).

benchmarks/memory_estimate.py measures the peak against this; benchmarks/RESULTS.md has the comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from togi.config import TrainConfig

GB = 1e9
# Measured on this CPU: the peak RSS of `togi train` on the 2-layer test model (Python with torch, transformers, PEFT, TRL
# and datasets, the tokenizer and the data; its weights and activations are a few MB). benchmarks/memory_estimate.py.
PROCESS_BASELINE = {"cpu": 0.56 * GB, "cuda": 0.0}
NF4_BYTES = 0.5 + 1 / 32  # 4-bit weights, plus one fp8 scale per 64 weights and the double-quantized scales' own scales
ADAM_STATES = 2


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on, read from config.json and a weightless skeleton with the method applied."""

    parameters: int
    trainable: int
    quantizable: int  # the weights of the linear layers in the blocks: what QLoRA stores in 4 bits
    hidden: int
    intermediate: int
    key_value: int  # the width of keys (and of values): key/value heads x head size
    blocks: int
    vocabulary: int
    adapted_inputs: int = 0  # the input widths of every LoRA-adapted layer, all blocks together: what LoRA dropout keeps per token


@dataclass(frozen=True)
class Setup:
    """How the recipe trains: the method, on which device, in which type, over how many devices."""

    method: str
    device: str  # "cuda" or "cpu"
    precision: str
    batch_size: int
    sequence_length: int
    pass_tokens: int | None  # a CPU's micro_batch_tokens: the most tokens of a batch one pass takes
    checkpointing: bool
    devices: int = 1
    strategy: str = "ddp"  # ddp, fsdp or deepspeed
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_parameters: bool = False
    lora_dropout: float = 0.0


@dataclass(frozen=True)
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    process: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.process


def model_shape(config: TrainConfig, method: str | None = None) -> ModelShape:
    """The recipe's model built on the meta device from its config.json, with ``method`` (default: the recipe's) applied."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from togi.models.resolve import ModelNotFound, resolve_model

    shape_only = Path(config.model).expanduser()
    if (shape_only / "config.json").is_file():  # a directory with a config.json is enough: no tokenizer, no weights
        model_config = AutoConfig.from_pretrained(shape_only)
    else:
        source = resolve_model(config.model)
        try:
            model_config = AutoConfig.from_pretrained(source.directory, gguf_file=source.gguf_file)
        except OSError as error:
            raise ModelNotFound(f"no config.json for model {config.model}: {str(error).splitlines()[0]}",
                                "give a model directory, or a directory holding only its config.json (see examples/shapes/)") from None
    text = model_config.get_text_config()
    with torch.device("meta"):  # (accelerate's init_empty_weights leaves tied embeddings untied: the head counted twice)
        skeleton = AutoModelForCausalLM.from_config(model_config)
        parameters, quantizable = sum(p.numel() for p in skeleton.parameters()), _block_linear_parameters(skeleton)
        trained = _with_method(skeleton, config if method is None else config.model_copy(update={"method": method}))
        adapted_inputs = sum(module.in_features for name, module in trained.named_modules() if hasattr(module, "lora_A")
                             and hasattr(module, "in_features"))
    heads = text.num_attention_heads
    head_size = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(
        parameters=parameters,
        trainable=sum(p.numel() for p in trained.parameters() if p.requires_grad),
        quantizable=quantizable, hidden=text.hidden_size, intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size),
        key_value=(getattr(text, "num_key_value_heads", None) or heads) * head_size, blocks=text.num_hidden_layers,
        vocabulary=text.vocab_size, adapted_inputs=adapted_inputs)


def _with_method(skeleton: Any, config: TrainConfig) -> Any:
    from togi.train.methods import _freeze_all_but, lora_config

    if config.method == "full":
        return skeleton
    if config.method == "freeze":
        return _freeze_all_but(skeleton, config)
    if config.traits.lora:
        import peft

        return peft.get_peft_model(skeleton, lora_config(skeleton, config, peft.TaskType.CAUSAL_LM))
    for parameter in skeleton.parameters():  # prompt and prefix tuning train a few thousand values: none of the model
        parameter.requires_grad = False
    return skeleton


def _block_linear_parameters(model: Any) -> int:
    from torch import nn

    from togi.train.methods import transformer_blocks

    return sum(module.weight.numel() for block in transformer_blocks(model) for module in block.modules() if isinstance(module, nn.Linear))


def estimate(shape: ModelShape, setup: Setup) -> MemoryEstimate:
    """Peak bytes on each device for ``shape`` trained as ``setup`` (see the module's notes for each part)."""
    compute = 4 if setup.device == "cpu" or setup.precision == "fp32" else 2
    adapter = setup.method in ("lora", "dora", "qlora", "prompt_tuning", "prefix_tuning")
    trained_bytes = 4 if adapter or setup.device == "cpu" or setup.precision == "fp32" else compute
    if setup.method == "qlora":
        weights = shape.quantizable * NF4_BYTES + (shape.parameters - shape.quantizable) * compute
    else:
        weights = shape.parameters * compute + (shape.trainable * (trained_bytes - compute) if adapter else 0)
    gradients = shape.trainable * trained_bytes
    optimizer = shape.trainable * trained_bytes * ADAM_STATES

    devices = setup.devices
    if devices > 1:
        sharded = setup.strategy == "fsdp" or (setup.strategy == "deepspeed" and setup.zero_stage == 3)
        if sharded:
            weights, gradients, optimizer = weights / devices, gradients / devices, optimizer / devices
        elif setup.strategy == "deepspeed":  # ZeRO-2
            gradients, optimizer = gradients / devices, optimizer / devices
        else:  # DDP: each device holds all, and its gradient buckets a second copy of the gradients
            gradients *= 2
        if setup.offload_optimizer:
            optimizer = 0.0
        if setup.offload_parameters and sharded:
            weights = 0.0

    tokens = setup.batch_size * setup.sequence_length
    pass_tokens = min(tokens, setup.pass_tokens) if setup.pass_tokens else tokens
    per_token_block = compute * (8 * shape.hidden + 4 * shape.intermediate + 2 * shape.key_value)
    if setup.checkpointing:
        activations = pass_tokens * (shape.blocks * shape.hidden * compute + per_token_block)
    else:
        activations = pass_tokens * shape.blocks * per_token_block
    if setup.lora_dropout and shape.adapted_inputs:
        # PEFT keeps each adapted layer's dropped-out input and its mask; togi's CPU LoRA layer the one-byte mask alone.
        per_element = 1 if setup.device == "cpu" and setup.method == "lora" else compute + 1
        kept = shape.adapted_inputs / shape.blocks if setup.checkpointing else shape.adapted_inputs  # one block's, when recomputed
        activations += pass_tokens * kept * per_element
    logits = pass_tokens * shape.vocabulary * (compute + 4 + 4)  # the logits, their float32 copy for the loss, its gradient
    return MemoryEstimate(weights=weights, gradients=gradients, optimizer=optimizer, activations=activations, logits=logits,
                          process=PROCESS_BASELINE.get(setup.device, 0.0))


def largest_batch(shape: ModelShape, setup: Setup, memory: float) -> int:
    """The largest batch size whose estimate fits in ``memory`` bytes (0: not even one example)."""
    if estimate(shape, replace(setup, batch_size=1)).total > memory:
        return 0
    low, high = 1, 2
    while estimate(shape, replace(setup, batch_size=high)).total <= memory and high < 1 << 16:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if estimate(shape, replace(setup, batch_size=middle)).total <= memory else (low, middle)
    return low


def recipe_setup(config: TrainConfig, device: str, devices: int) -> Setup:
    """The Setup a recipe trains with on ``devices`` devices of kind ``device``."""
    from togi.config import CPU_MICRO_BATCH_TOKENS
    from togi.models.device import plan_device

    training = config.training
    precision = training.precision if training.precision != "auto" else ("bf16" if device == "cuda" else plan_device("auto").precision)
    checkpointing = device == "cuda" if training.gradient_checkpointing == "auto" else bool(training.gradient_checkpointing)
    pass_tokens = None
    if device == "cpu" and devices == 1:
        setting = training.micro_batch_tokens
        pass_tokens = CPU_MICRO_BATCH_TOKENS.get(precision) if setting == "auto" else setting
    distributed = getattr(config, "distributed", None)  # a classifier has no distributed section
    return Setup(method=config.method, device=device, precision=precision, batch_size=training.batch_size,
                 sequence_length=config.data.max_length, pass_tokens=pass_tokens, checkpointing=checkpointing or bool(
                     distributed and distributed.strategy == "fsdp" and distributed.fsdp.activation_checkpointing),
                 devices=devices, strategy=distributed.strategy if distributed else "ddp",
                 zero_stage=distributed.deepspeed.zero_stage if distributed else 2,
                 offload_optimizer=bool(distributed and (distributed.deepspeed.offload_optimizer or distributed.fsdp.cpu_offload)),
                 offload_parameters=bool(distributed and (distributed.deepspeed.offload_parameters or distributed.fsdp.cpu_offload)),
                 lora_dropout=config.lora.dropout if config.traits.lora else 0.0)


def parse_memory(text: str) -> float:
    """'80GB', '80GiB', '24G', '512MB' -> bytes."""
    units = {"": GB, "g": GB, "gb": GB, "gib": 2**30, "m": 1e6, "mb": 1e6, "mib": 2**20, "t": 1e12, "tb": 1e12}
    number = text.strip().lower().rstrip("s")
    digits = number.rstrip("abcdefghijklmnopqrstuvwxyz ")
    unit = number[len(digits):].strip()
    if unit not in units:
        raise ValueError(f"{text!r}: give a size such as 80GB, 24GiB or 512MB")
    try:
        value = float(digits)
    except ValueError:
        raise ValueError(f"{text!r}: give a size such as 80GB, 24GiB or 512MB") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{text!r}: a device's memory is a positive size")
    return value * units[unit]
