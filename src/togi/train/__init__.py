"""Training. One entry point, ``train(config)``, runs the recipe the config names and returns a ``RunResult``:

- ``task: classification``: a text classifier with a new head (``classification.py``);
- ``stage: dpo | orpo | kto | reward | rlhf``: a preference or RL stage on TRL's trainers (``preference.py``);
- otherwise supervised fine-tuning (``sft.py``).

What every recipe does around its trainer (the run directory, resuming, togi's callbacks beside the user's,
out-of-memory and NaN-loss failures, the result) is written once, in ``session.py``. The result type and the
failure every recipe may raise are in ``result.py``: the recipes import them from there, not from this module,
which imports the recipes. Methods (full, freeze, LoRA, DoRA, QLoRA, prompt and prefix tuning) are in ``methods.py``.

This module imports no training library, so that ``import togi`` stays fast: a recipe loads when it runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from togi.train.result import RunResult, TrainingFailed

if TYPE_CHECKING:
    from togi.config import TrainConfig


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
    everywhere, but only a machine with what it asks for (a CUDA GPU for QLoRA, the reporting package) can train it.
    A run directory given as the model is turned away then too, with the way to its weights."""
    from togi.config import recipe_kind
    from togi.runs import refuse_run_as_model
    from togi.train.runnable import check_runnable

    check_runnable(config)
    refuse_run_as_model(config.model)
    kind = recipe_kind(config)  # the kind load_config validated the recipe as
    if kind == "classification":
        from togi.train.classification import train_classifier as recipe
    elif kind == "preference":
        from togi.train.preference import train_stage as recipe
    else:
        from togi.train.sft import train_sft as recipe
    return recipe(config, resume_dir=resume_dir, console=console, log=log, callbacks=callbacks)


__all__ = ["RunResult", "TrainingFailed", "train"]
