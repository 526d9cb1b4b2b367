"""Can this machine train this recipe? The one place where a recipe meets the machine.

A recipe is valid or not on its own (``togi.config``): the same file reads the same way on a laptop and
on a GPU server, so a QLoRA run trained on a GPU can still be evaluated, exported and served on a CPU
machine. Only training asks whether the machine can run it: ``check_runnable`` is called before any
model loads, and reports each problem at the recipe field that causes it, like any recipe error.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from togi.config import ConfigError, ConfigIssue, TrainConfig

# The packages behind monitoring.report_to.
REPORTER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
OPTIONAL_PACKAGES = (*REPORTER_PACKAGES.values(), "deepspeed")


@dataclass(frozen=True)
class Machine:
    """What training needs to know about the machine it runs on."""

    cuda: bool
    installed: frozenset[str]  # the importable packages among those a recipe may ask for

    @classmethod
    def current(cls) -> Machine:
        import torch

        return cls(cuda=torch.cuda.is_available(),
                   installed=frozenset(name for name in OPTIONAL_PACKAGES if importlib.util.find_spec(name) is not None))


def check_runnable(config: TrainConfig, machine: Machine | None = None, processes: int | None = None) -> None:
    """Raise ConfigError naming each recipe field this machine cannot honour (default: this machine), on ``processes``
    processes (default: as many as the launcher started, 1 without one)."""
    from togi.train.distributed import Processes

    machine = machine or Machine.current()
    processes = processes or Processes.current().world_size
    issues = []
    if processes > 1:
        issues += _distributed_issues(config, machine)
    if config.traits.needs_cuda and not machine.cuda:
        issues.append(ConfigIssue("method", f"{config.method} quantizes the model to 4 bits with bitsandbytes, which needs a CUDA GPU, "
                                  "and this machine has none", "use method: lora here; QLoRA runs on a CUDA GPU only"))
    package = REPORTER_PACKAGES.get(config.monitoring.report_to)
    if package and package not in machine.installed:
        issues.append(ConfigIssue("monitoring.report_to", f"is {package}, but the {package} package is not installed",
                                  f"pip install {package}, or set report_to: none"))
    if issues:
        raise ConfigError("on this machine", issues)


def _distributed_issues(config: TrainConfig, machine: Machine) -> list[ConfigIssue]:
    if config.task != "chat" or config.stage == "rlhf":
        return [ConfigIssue("stage" if config.task == "chat" else "task", f"{config.task} {config.stage} trains on one process; supervised "
                            "fine-tuning and the dpo, orpo, kto and reward stages train on several",
                            "drop --nproc-per-node, or run it without torchrun")]
    strategy = config.distributed.strategy
    if strategy == "fsdp" and not machine.cuda:
        # accelerate enables its FSDP plugin only for processes on accelerators (CUDA, XPU, NPU, ...), never on CPUs.
        return [ConfigIssue("distributed.strategy", "fsdp shards the model over GPUs, and this machine has none (accelerate runs "
                            "FSDP on accelerators only)", "use distributed.strategy: ddp here; fsdp on a machine with GPUs")]
    if strategy == "deepspeed":
        if not machine.cuda:
            return [ConfigIssue("distributed.strategy", "deepspeed runs on GPUs, and this machine has none",
                                "use distributed.strategy: ddp here; deepspeed on a machine with GPUs")]
        if "deepspeed" not in machine.installed:
            return [ConfigIssue("distributed.strategy", "is deepspeed, but the deepspeed package is not installed",
                                "pip install deepspeed, or use distributed.strategy: fsdp (built into torch)")]
    if config.distributed.fsdp.cpu_offload and not machine.cuda:
        return [ConfigIssue("distributed.fsdp.cpu_offload", "moves GPU memory to the CPU; this run has no GPU", "drop it")]
    return []
