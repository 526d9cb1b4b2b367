"""Upload an exported model or adapter to a Hugging Face Hub repository, with a model card.

The upload is ``huggingface_hub``'s own ``create_repo`` + ``upload_folder``; ``endpoint`` points it at
another Hub-compatible server (the tests use one on loopback, since this machine has no network).
``--dry-run`` lists what would be uploaded without contacting anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from togi.data.writer import atomic_write_text
from togi.models.embedded import EMBEDDED_MODEL_NAME
from togi.runs import Run

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class HubUpload:
    repo_id: str
    private: bool
    files: list[tuple[str, int]]  # path in the repository, size in bytes
    url: str | None = None  # the commit, once uploaded

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def base_model_id(model: str) -> str:
    return EMBEDDED_HUB_ID if model == EMBEDDED_MODEL_NAME else model


def write_hub_model_card(folder: Path, run_dir: Path, repo_id: str, kind: str) -> None:
    """README.md with the Hub's metadata header (base model, library, tags) and how to load the model."""
    run = Run.open(run_dir)
    config, info = run.config, run.info
    result = info.get("result", {})
    library = "peft" if kind == "adapter" else "transformers"
    loader = ("from peft import AutoPeftModelForCausalLM\n"
              f"model = AutoPeftModelForCausalLM.from_pretrained({repo_id!r})" if kind == "adapter" else
              "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"model = AutoModelForCausalLM.from_pretrained({repo_id!r})\ntokenizer = AutoTokenizer.from_pretrained({repo_id!r})")
    card = f"""---
base_model: {base_model_id(config.model)}
library_name: {library}
pipeline_tag: text-generation
tags:
- togi
- {config.method}
---

# {repo_id.split('/')[-1]}

Fine-tuned with [togi](https://pypi.org/project/togi/) {info.get('versions', {}).get('togi', '')} from
**{base_model_id(config.model)}** by **{config.method}** ({'the adapter alone' if kind == 'adapter' else 'the adapter merged into the weights' if config.traits.adapter else 'full weights'}).

| | |
|---|---|
| training examples | {info.get('data', {}).get('train_examples', '?')} |
| validation examples | {info.get('data', {}).get('val_examples', 0)} |
| steps | {result.get('steps', '?')} |
| final train loss | {result.get('train_loss', '?')} |
| final eval loss | {result.get('eval_loss', '?')} |
| learning rate | {config.learning_rate:g} |
| epochs | {config.training.epochs:g} |

The loss was taken on assistant messages only. Prompt the model with its chat template
(`tokenizer.apply_chat_template`), which is saved with it and is the one it was trained with.

```python
{loader}
```
"""
    atomic_write_text(folder / "README.md", card)


def plan_upload(folder: Path, repo_id: str, private: bool) -> HubUpload:
    files = sorted((str(path.relative_to(folder)), path.stat().st_size) for path in folder.rglob("*")
                   if path.is_file() and not path.name.startswith("."))
    return HubUpload(repo_id, private, files)


def upload(plan: HubUpload, folder: Path, token: str | None = None, endpoint: str | None = None,
           commit_message: str = "Upload model fine-tuned with togi") -> HubUpload:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(plan.repo_id, private=plan.private, exist_ok=True)
    commit: Any = api.upload_folder(folder_path=str(folder), repo_id=plan.repo_id, commit_message=commit_message,
                                    allow_patterns=[path for path, _ in plan.files])
    plan.url = str(getattr(commit, "commit_url", commit))
    return plan
