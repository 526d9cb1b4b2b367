"""Training. One entry point, ``train(config)``, runs the recipe the config names and returns a ``RunResult``:

- ``task: classification``: a text classifier with a new head (``classification.py``);
- ``stage: dpo | orpo | kto | reward | rlhf``: a preference or RL stage on TRL's trainers (``preference.py``);
- otherwise supervised fine-tuning (``sft.py``).

What every recipe does around its trainer (the run directory, resuming, togi's callbacks beside the user's,
out-of-memory and NaN-loss failures, the result) is written once, in ``session.py``. Methods (full, freeze,
LoRA, DoRA, QLoRA, prompt and prefix tuning) are in ``methods.py``.

This module imports no training library, so that ``import togi`` stays fast: a recipe loads when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from togi.errors import TogiError

if TYPE_CHECKING:
    from togi.config import TrainConfig
    from togi.train.methods import ParameterCount
    from togi.train.samples import Sample


class TrainingFailed(TogiError):
    """The run stopped for a reason the user can act on; ``run_dir`` keeps what was saved."""

    work_failed = True

    def __init__(self, message: str, run_dir: Path, hint: str | None = None) -> None:
        super().__init__(message, hint if hint is not None else f"what was saved is in {run_dir}")
        self.run_dir = run_dir


@dataclass
class RunResult:
    """What every recipe returns: where the run is, how it ended, and its final numbers."""

    run_dir: Path
    output_dir: Path  # the trained adapter/ or model/ inside run_dir
    status: str  # "succeeded", or "early_stopped"
    steps: int
    train_loss: float | None
    eval_loss: float | None
    parameters: ParameterCount
    seconds: float  # wall time of the whole run, loading included
    tokens_per_second: float | None = None
    # The last evaluation's task scores by name: monitoring.eval_metric's for a chat model; accuracy and
    # macro_f1 for a classifier, beside majority_baseline, the accuracy of always answering the commonest label.
    scores: dict[str, float] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)  # a classifier's labels, in the order of its outputs
    warnings: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)  # base and tuned answers to held-out prompts (monitoring.samples)


def train(
    config: TrainConfig,
    *,
    resume_dir: Path | str | None = None,
    console: Any = None,
    log: Callable[[str], None] = print,
    callbacks: Sequence[Any] = (),
) -> RunResult:
    """Train as ``config`` says (its task and stage choose the recipe) and return where the result is.

    ``resume_dir`` continues a run from its last checkpoint, with the same data order and random state as if
    it had never stopped (a classifier saves no checkpoints to continue from); ``callbacks`` are more
    transformers ``TrainerCallback``s to run beside togi's own; ``console``, a rich console, shows a progress bar.

    Before any model loads, the recipe is checked against this machine (``runnable.py``): a recipe reads the same
    everywhere, but only a machine with what it asks for (a CUDA GPU for QLoRA, the reporting package) can train it."""
    from togi.train.runnable import check_runnable

    check_runnable(config)
    if config.task == "classification":
        from togi.train.classification import train_classifier as recipe
    elif config.stage != "sft":
        from togi.train.preference import train_stage as recipe
    else:
        from togi.train.sft import train_sft as recipe
    return recipe(config, resume_dir=resume_dir, console=console, log=log, callbacks=callbacks)


__all__ = ["RunResult", "TrainingFailed", "train"]
