"""The run directory that every training run writes, and everything later reads (DESIGN.md). This module is
the only code that knows its layout: training writes through ``Run`` (``togi.train``), and evaluate, export,
serve and the CLI open a finished run with ``Run.open(path)``.

    RUN_DIR/
      config.yaml          the resolved recipe (``togi train --resume RUN_DIR`` reads it back)
      run.json             status, data fingerprint, library versions, device and precision, chat template;
                           for a classifier (task: classification) its labels in id order and the scores
      metrics.jsonl        one record per logged step (a classifier's: eval accuracy and macro-F1 per epoch)
      stage_metrics.jsonl  a preference or RL stage's own logged values (reward margins, accuracies, rewards)
      loss.png             train and eval loss curves
      data/                the exact train and validation examples used (OpenAI chat JSONL; {text, label} rows for a classifier)
      checkpoints/         checkpoint-N directories (the last K)
      adapter/ | model/    the result: a PEFT adapter, or a full model (full and freeze), each with its tokenizer
      samples.jsonl        base and tuned answers to a few held-out prompts
      README.md            a short model card

Importing this module loads neither torch nor any training code: ``load_trained_model`` imports what it needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from togi.data.writer import atomic_write_text
from togi.errors import TogiError

if TYPE_CHECKING:
    from togi.config import TrainConfig

CHECKPOINT_PREFIX = "checkpoint-"


class RunDirectoryError(TogiError):
    """A directory that is not a run, or a run that does not hold what was asked of it."""


def refuse_run_as_model(reference: str | Path | None) -> None:
    """Raise RunDirectoryError when ``reference``, given where a base model is expected (a recipe's model, --model),
    is a run directory: a run holds a result to export, not a model that loads as it is. ``togi.models`` resolves
    model references without knowing runs, so the layers that take a model from the user ask here first."""
    if reference is None:
        return
    run = Run(Path(reference).expanduser())
    if run.info_path.is_file() and run.config_path.is_file():
        raise RunDirectoryError(f"{run.path} is a togi run directory, not a model",
                                f"to train on from it, export its weights first: togi export {run.path} --to merged, then "
                                f"--model {run.path / 'export' / 'merged'} (a full or freeze run's weights are in {run.model_dir})")


def read_metrics(metrics_path: Path) -> list[dict[str, Any]]:
    """The records of a metrics JSONL file; a line cut off by a killed run is skipped."""
    if not metrics_path.is_file():
        return []
    records = []
    for line in metrics_path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


@dataclass(frozen=True)
class Run:
    """A run directory. ``Run(path)`` names one that may not exist yet (training writes it); ``Run.open(path)``
    is for one that must: it refuses a directory that is not a run."""

    path: Path

    @classmethod
    def open(cls, path: Path | str) -> Run:
        run = cls(Path(path))
        if not run.config_path.is_file():
            raise RunDirectoryError(f"{run.path} is not a togi run directory (no config.yaml)",
                                    "pass the directory a `togi train` run created")
        return run

    @staticmethod
    def is_run(path: Path | str) -> bool:
        """Whether ``path`` holds a run (its recipe), finished or not."""
        return Run(Path(path)).config_path.is_file()

    # --- the layout ---------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def info_path(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def stage_metrics_path(self) -> Path:
        return self.path / "stage_metrics.jsonl"

    @property
    def plot_path(self) -> Path:
        return self.path / "loss.png"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    def split_path(self, split: str) -> Path:
        """The examples of one split (``train`` or ``val``) exactly as the run used them."""
        return self.data_dir / f"{split}.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples_path(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def card_path(self) -> Path:
        return self.path / "README.md"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def output_dir_for(self, config: TrainConfig) -> Path:
        """Where a run of ``config`` saves what it trained: adapter/ for a method that trains an adapter, else model/."""
        return self.adapter_dir if config.traits.adapter else self.model_dir

    # --- reading ------------------------------------------------------------------------------------------

    @cached_property
    def config(self) -> TrainConfig:
        from togi.config import load_config

        return load_config(self.config_path)

    @property
    def info(self) -> dict[str, Any]:
        """run.json as it is now (training rewrites it as the run goes); empty when there is none or it is unreadable."""
        try:
            return json.loads(self.info_path.read_text(encoding="utf-8")) if self.info_path.is_file() else {}
        except (OSError, json.JSONDecodeError):
            return {}

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics_path)

    def checkpoints(self) -> list[Path]:
        """The checkpoint directories, oldest first (the newest may still be being written)."""
        return sorted((p for p in self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()), key=checkpoint_step)

    def last_checkpoint(self) -> Path | None:
        """The newest checkpoint that was saved completely (its trainer state is written last)."""
        complete = [p for p in self.checkpoints() if (p / "trainer_state.json").is_file()]
        return complete[-1] if complete else None

    @property
    def output_dir(self) -> Path:
        """What the run trained: adapter/ or model/, as its method says. Raises when the run has not saved it."""
        output = self.output_dir_for(self.config)
        if not output.is_dir():
            raise RunDirectoryError(f"{self.path} has no trained {output.name}/ yet (status: {self.info.get('status', 'unknown')})",
                                    "wait for the run to finish, or train again")
        return output

    @property
    def scores_texts(self) -> bool:
        """Whether the trained model scores texts (a classifier, or a reward model) rather than generating them."""
        return self.config.task == "classification" or self.config.stage == "reward"

    def load_trained_model(self, *, merge: bool = False, precision: str = "auto") -> tuple[Any, Any]:
        """The run's trained model, ready for inference, and the tokenizer saved with it.

        model/ loads as saved. adapter/ loads on the run's base model; ``merge`` folds it into the weights
        (LoRA and DoRA adapters only). A classifier run gives a sequence-classification model naming its labels,
        a reward run one with a single score; their adapters are always merged."""
        from togi.models.device import plan_device
        from togi.models.resolve import load_tokenizer

        config, output = self.config, self.output_dir
        is_adapter = output == self.adapter_dir
        merge = merge or (is_adapter and self.scores_texts)
        if merge and is_adapter and not config.traits.lora:  # only low-rank updates fold into the weights
            raise RunDirectoryError(f"{config.method} adapters cannot be merged into the weights",
                                    f"use the adapter as it is: togi export {self.path} --to adapter")
        plan = plan_device(precision)
        tokenizer = load_tokenizer(str(output))
        if self.scores_texts:
            model = self._load_text_scorer(output, is_adapter, tokenizer, plan.weights_dtype).to(plan.device)
        elif is_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(self.load_base_model(precision), output)
        else:
            from togi.models.loading import load_causal_lm
            from togi.models.resolve import resolve_model

            model = load_causal_lm(resolve_model(str(output)), plan)
        if merge and is_adapter and not self.scores_texts:
            model = model.merge_and_unload()
        return model.eval(), tokenizer

    def load_base_model(self, precision: str = "auto") -> Any:
        """The causal language model the run started from."""
        from togi.models.device import plan_device
        from togi.models.loading import load_causal_lm
        from togi.models.resolve import resolve_model

        return load_causal_lm(resolve_model(self.config.model), plan_device(precision))

    def _load_text_scorer(self, output: Path, is_adapter: bool, tokenizer: Any, dtype: Any) -> Any:
        labels = self.info.get("labels") if self.config.task == "classification" else None
        settings: dict[str, Any] = {"num_labels": len(labels) if labels else 1, "dtype": dtype}
        if labels:
            settings.update(id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
        if not is_adapter:  # model/ carries its own head configuration
            from transformers import AutoModelForSequenceClassification

            return AutoModelForSequenceClassification.from_pretrained(output, dtype=dtype)
        from peft import AutoPeftModelForSequenceClassification

        return AutoPeftModelForSequenceClassification.from_pretrained(output, pad_token_id=tokenizer.pad_token_id,
                                                                      **settings).merge_and_unload()

    # --- writing (training) -------------------------------------------------------------------------------

    def write_config(self, config: TrainConfig) -> None:
        atomic_write_text(self.config_path, config.to_yaml())

    def write_info(self, **updates: Any) -> None:
        info = self.info
        info.update(updates)
        atomic_write_text(self.info_path, json.dumps(info, ensure_ascii=False, indent=2) + "\n")

    def drop_metrics_after(self, step: int) -> None:
        """On resume, forget the records a killed run wrote after its last checkpoint."""
        if self.metrics_path.is_file():
            kept = [record for record in self.metrics() if record.get("step", 0) <= step]
            atomic_write_text(self.metrics_path, "".join(json.dumps(record) + "\n" for record in kept))
