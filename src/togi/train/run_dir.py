"""The self-describing run directory that every training run writes (DESIGN.md).

    RUN_DIR/
      config.yaml        the resolved recipe (``togi train --resume RUN_DIR`` reads it back)
      run.json           status, data fingerprint, library versions, device and precision, chat template;
                         for a classifier (task: classification) its labels in id order and the scores
      metrics.jsonl      one record per logged step (a classifier's: eval accuracy and macro-F1 per epoch)
      loss.png           train and eval loss curves
      data/              the exact train and validation examples used (OpenAI chat JSONL; {text, label} rows for a classifier)
      checkpoints/       checkpoint-N directories (the last K)
      adapter/ | model/  the result: a PEFT adapter, or a full model, each with its tokenizer
      README.md          a short model card
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from togi.version import __version__
from togi.config import TrainConfig
from togi.data.writer import atomic_write_text

LIBRARIES = ("torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers")


def library_versions() -> dict[str, str]:
    versions = {"togi": __version__, "python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def file_fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path), "sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def default_run_dir(config: TrainConfig) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.method}"


@dataclass(frozen=True)
class RunDirectory:
    path: Path

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
    def plot_path(self) -> Path:
        return self.path / "loss.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    def output_dir(self, config: TrainConfig) -> Path:
        return self.path / ("model" if config.method in ("full", "freeze") else "adapter")

    def last_checkpoint(self) -> Path | None:
        candidates = [p for p in self.checkpoints.glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").is_file()]
        return max(candidates, key=lambda p: int(p.name.rsplit("-", 1)[-1]), default=None)

    def read_info(self) -> dict[str, Any]:
        return json.loads(self.info_path.read_text(encoding="utf-8")) if self.info_path.is_file() else {}

    def write_info(self, **updates: Any) -> None:
        info = self.read_info()
        info.update(updates)
        atomic_write_text(self.info_path, json.dumps(info, ensure_ascii=False, indent=2) + "\n")

    def drop_metrics_after(self, step: int) -> None:
        """On resume, forget the records a killed run wrote after its last checkpoint."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))


def write_model_card(run: RunDirectory, config: TrainConfig, info: dict[str, Any]) -> None:
    result = info.get("result", {})
    output = run.output_dir(config)
    if config.task == "classification":
        auto_class, arguments = "ForSequenceClassification", f", num_labels={len(info.get('labels', []))}"
        trained = (f"A new classification head ({', '.join(info.get('head', []))}) over the labels {', '.join(info.get('labels', []))}"
                   f"{', on the frozen model' if config.method == 'freeze' else ''}.")
    else:
        auto_class, arguments = "ForCausalLM", ""
        trained = (f"The loss is taken on assistant messages only{' (and the prompt: train_on_prompt)' if config.data.train_on_prompt else ''}.\n"
                   f"Chat template: {info.get('chat_template', 'the model’s own')}.")
    if config.method in ("full", "freeze"):
        loader = f"from transformers import AutoModel{auto_class}\nmodel = AutoModel{auto_class}.from_pretrained('{output}')"
    else:
        loader = f"from peft import AutoPeftModel{auto_class}\nmodel = AutoPeftModel{auto_class}.from_pretrained('{output}'{arguments})"
    scores = "".join(f"| {name} | {result[key]:.4f} |\n" for key, name in (
        ("accuracy", "validation accuracy"), ("macro_f1", "validation macro-F1"), ("majority_baseline", "majority-class baseline"))
        if result.get(key) is not None)
    card = f"""# {run.path.name}

Fine-tuned with togi {info.get('versions', {}).get('togi', '')} from **{config.model}** by **{config.method}**
on `{config.data.train_file}` ({info.get('data', {}).get('train_examples', '?')} training examples,
{info.get('data', {}).get('val_examples', 0)} validation examples).

| | |
|---|---|
| status | {info.get('status')} |
| steps | {result.get('steps')} |
| final train loss | {result.get('train_loss')} |
| final eval loss | {result.get('eval_loss')} |
{scores}| trainable parameters | {info.get('parameters')} |
| device | {info.get('device')} |
| learning rate | {config.learning_rate:g} |
| epochs | {config.training.epochs:g} |

{trained}

```python
{loader}
```
"""
    atomic_write_text(run.path / "README.md", card)
