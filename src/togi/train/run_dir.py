"""What training records in a run directory beside the model: library versions, data fingerprints, the
default directory name and the model card. The directory's layout is ``togi.runs``'s."""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import time
from pathlib import Path
from typing import Any

from togi.version import __version__
from togi.config import TrainConfig
from togi.data.writer import atomic_write_text
from togi.runs import Run

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


def write_model_card(run: Run, config: TrainConfig, info: dict[str, Any]) -> None:
    result = info.get("result", {})
    output = run.output_dir_for(config)
    if config.task == "classification":
        auto_class, arguments = "ForSequenceClassification", f", num_labels={len(info.get('labels', []))}"
        trained = (f"A new classification head ({', '.join(info.get('head', []))}) over the labels {', '.join(info.get('labels', []))}"
                   f"{', on the frozen model' if config.method == 'freeze' else ''}.")
    elif config.stage == "reward":
        auto_class, arguments = "ForSequenceClassification", ", num_labels=1"
        trained = f"A reward model: one score per conversation, trained on preference pairs (its own values in {run.stage_metrics_path.name})."
    elif config.stage != "sft":
        auto_class, arguments = "ForCausalLM", ""
        trained = (f"Trained by the {config.stage} stage on {'prompts scored by a reward' if config.stage == 'rlhf' else 'preference data'} "
                   f"(its own values in {run.stage_metrics_path.name}).")
    else:
        auto_class, arguments = "ForCausalLM", ""
        trained = (f"The loss is taken on assistant messages only{' (and the prompt: train_on_prompt)' if config.data.train_on_prompt else ''}.\n"
                   f"Chat template: {info.get('chat_template', 'the model’s own')}.")
    if output == run.model_dir:
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
    atomic_write_text(run.card_path, card)
