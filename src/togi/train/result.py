"""What every training recipe returns, and the failure any of them may raise. A module of its own, below the
recipes and ``session.py``: ``togi.train`` (the package) imports the recipes to dispatch to them, so they
cannot import it back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from togi.errors import TogiError

if TYPE_CHECKING:
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
