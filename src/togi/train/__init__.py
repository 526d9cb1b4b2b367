"""Training: methods (full, freeze, LoRA, DoRA, QLoRA, prompt and prefix tuning), SFT, monitoring, run directories."""

from togi.train.sft import RunResult, TrainingFailed, train

__all__ = ["RunResult", "TrainingFailed", "train"]
