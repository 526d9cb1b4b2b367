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


@dataclass(frozen=True)
class Machine:
    """What training needs to know about the machine it runs on."""

    cuda: bool
    installed: frozenset[str]  # the importable packages among those a recipe may ask for

    @classmethod
    def current(cls) -> Machine:
        import torch

        return cls(cuda=torch.cuda.is_available(),
                   installed=frozenset(name for name in REPORTER_PACKAGES.values() if importlib.util.find_spec(name) is not None))


def check_runnable(config: TrainConfig, machine: Machine | None = None) -> None:
    """Raise ConfigError naming each recipe field this machine cannot honour (default: this machine)."""
    machine = machine or Machine.current()
    issues = []
    if config.traits.needs_cuda and not machine.cuda:
        issues.append(ConfigIssue("method", f"{config.method} quantizes the model to 4 bits with bitsandbytes, which needs a CUDA GPU, "
                                  "and this machine has none", "use method: lora here; QLoRA runs on a CUDA GPU only"))
    package = REPORTER_PACKAGES.get(config.monitoring.report_to)
    if package and package not in machine.installed:
        issues.append(ConfigIssue("monitoring.report_to", f"is {package}, but the {package} package is not installed",
                                  f"pip install {package}, or set report_to: none"))
    if issues:
        raise ConfigError("on this machine", issues)
