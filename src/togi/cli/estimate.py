"""``togi estimate``: what a recipe needs in memory per device, and what fits when it does not (``togi.train.memory_plan``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from togi.cli.common import fail, quiet_libraries
from togi.cli.terminal import make_console
from togi.config import TrainConfig, load_config
from togi.train.memory_plan import GB, MemoryEstimate, ModelShape, Setup, estimate, largest_batch, model_shape, parse_memory, recipe_setup

console = make_console()
COMPARED_METHODS = ("full", "lora", "qlora")


def estimate_command(
    recipe: Annotated[Optional[Path], typer.Argument(metavar="RECIPE", help="Recipe YAML.", show_default=False)] = None,
    gpus: Annotated[Optional[int], typer.Option(min=1, help="GPUs the run would train on (default: estimate for this machine's CPU, "
                                                "or 1 GPU when --gpu-memory is given).")] = None,
    gpu_memory: Annotated[Optional[str], typer.Option(help="Memory of each GPU, e.g. 80GB, 24GiB.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Base model (sets model): a directory with a config.json is enough.")] = None,
    method: Annotated[Optional[str], typer.Option(help="Training method (sets method).")] = None,
    set_values: Annotated[Optional[list[str]], typer.Option("--set", help="Override any recipe field: --set data.max_length=4096.")] = None,
) -> None:
    """Estimate peak memory per device for a recipe (weights, gradients, optimizer, activations, logits) from the model's
    config.json alone, the largest batch that fits, and the cheapest method or strategy that fits when it does not.

    Examples: `togi estimate recipe.yaml --gpus 2 --gpu-memory 40GB` ·
    `togi estimate --model examples/shapes/llama-3.1-8b --gpu-memory 24GB` (no weights needed)
    """
    overrides = list(set_values or []) + [f"{key}={value}" for key, value in (("model", model), ("method", method)) if value is not None]
    if recipe is None and not any(value.startswith("data.train_file=") for value in overrides):
        overrides.append("data.train_file=train.jsonl")  # the data does not change the estimate; a recipe needs the field
    config = load_config(recipe, overrides)
    if config.task != "chat":
        raise fail(f"togi estimate sizes the training of chat models (causal LMs); this recipe is task {config.task}",
                   "a classifier's head over a small encoder fits where its base model does; estimate a task chat recipe")
    try:
        memory = parse_memory(gpu_memory) if gpu_memory else None
    except ValueError as error:
        raise fail(f"--gpu-memory {error}", "for example --gpu-memory 80GB") from None
    device = "cuda" if gpus or memory else "cpu"
    devices = gpus or 1
    quiet_libraries()
    shape = model_shape(config)
    setup = recipe_setup(config, device, devices)
    where = f"{devices} GPU{'s' if devices > 1 else ''}" + (f" of {memory / GB:g} GB" if memory else "") if device == "cuda" else "this CPU"
    console.print(Text(f"{config.model}: {shape.parameters / 1e9:.2f}B parameters, {shape.trainable / 1e6:,.1f}M trained by "
                       f"{config.method}; {where}, {setup.precision}, batch {setup.batch_size} x {setup.sequence_length} tokens"
                       + (", gradient checkpointing" if setup.checkpointing else "")
                       + (f", {setup.strategy}" + (f" ZeRO-{setup.zero_stage}" if setup.strategy == 'deepspeed' else '') if devices > 1 else ""),
                       style="bold"), soft_wrap=True)
    recipe_estimate = estimate(shape, setup)
    console.print(_parts_table(recipe_estimate, devices))
    if memory is not None:
        _verdict(config, shape, setup, recipe_estimate, memory)
    console.print(_methods_table(config, setup, memory))


def _parts_table(memory: MemoryEstimate, devices: int) -> Table:
    table = Table(title=f"peak memory per device{' (each of ' + str(devices) + ')' if devices > 1 else ''}", title_justify="left")
    table.add_column("part")
    table.add_column("GB", justify="right")
    for name in ("weights", "gradients", "optimizer", "activations", "logits", "process"):
        table.add_row(name, f"{getattr(memory, name) / GB:.2f}")
    table.add_row(Text("total", style="bold"), Text(f"{memory.total / GB:.2f}", style="bold"))
    return table


def _verdict(config: TrainConfig, shape: ModelShape, setup: Setup, memory: MemoryEstimate, capacity: float) -> None:
    batch = largest_batch(shape, setup, capacity)
    if memory.total <= capacity:
        console.print(Text(f"✓ fits: {memory.total / GB:.1f} of {capacity / GB:g} GB; the largest batch that fits is {batch}", style="green"))
        return
    console.print(Text(f"✗ does not fit: {memory.total / GB:.1f} GB needed, {capacity / GB:g} GB per GPU"
                       + (f"; batch {batch} would" if batch else ""), style="red"))
    cheaper = _cheapest_that_fits(config, shape, setup, capacity)
    if cheaper:
        console.print(Text(f"cheapest that fits: {cheaper}", style="yellow"), soft_wrap=True)
    else:
        console.print(Text("nothing tried fits: more GPUs, or GPUs with more memory (try --gpus)", style="yellow"))


def _cheapest_that_fits(config: TrainConfig, shape: ModelShape, setup: Setup, capacity: float) -> str | None:
    """The first of these that fits, from the least change to the recipe to the most."""
    method = config.method
    candidates = [("training.gradient_checkpointing: true", setup.method, replace(setup, checkpointing=True))]
    if setup.devices > 1:
        candidates += [("distributed.strategy: fsdp", method, replace(setup, strategy="fsdp", checkpointing=True)),
                       ("distributed.strategy: deepspeed, zero_stage 3 with offload_optimizer", method,
                        replace(setup, strategy="deepspeed", zero_stage=3, offload_optimizer=True, checkpointing=True))]
    dropout = config.lora.dropout
    candidates += [("method: lora with gradient checkpointing", "lora", replace(setup, method="lora", checkpointing=True, lora_dropout=dropout)),
                   ("method: qlora with gradient checkpointing", "qlora", replace(setup, method="qlora", checkpointing=True, lora_dropout=dropout))]
    for description, candidate_method, candidate in candidates:
        if candidate_method != method and method in ("lora", "qlora") and candidate_method == "lora":
            continue
        candidate_shape = shape if candidate_method == method else model_shape(config, method="lora")  # QLoRA trains LoRA's weights
        total = estimate(candidate_shape, candidate).total
        if total <= capacity:
            return f"{description} ({total / GB:.1f} GB; batch up to {largest_batch(candidate_shape, candidate, capacity)})"
    return None


def _methods_table(config: TrainConfig, setup: Setup, capacity: float | None) -> Table:
    table = Table(title="the methods side by side (this recipe's other settings)", title_justify="left")
    for column in ("method", "trained", "GB per device", *(("fits", "largest batch") if capacity else ())):
        table.add_column(column, justify="left" if column in ("method", "fits") else "right")
    for method in COMPARED_METHODS:
        if method == "qlora" and setup.device != "cuda":
            continue
        shape = model_shape(config, method="lora" if method == "qlora" else method)
        method_setup = replace(setup, method=method, lora_dropout=config.lora.dropout if method in ("lora", "qlora") else 0.0)
        total = estimate(shape, method_setup).total
        row = [method, f"{shape.trainable / 1e6:,.1f}M", f"{total / GB:.1f}"]
        if capacity:
            row += ["yes" if total <= capacity else "no", str(largest_batch(shape, method_setup, capacity))]
        table.add_row(*row)
    return table
