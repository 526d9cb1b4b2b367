"""Export a training run as a merged model or as a portable adapter.

- ``merged``: the LoRA/DoRA adapter folded into its base and saved as a plain transformers model
  (safetensors) with the tokenizer, its chat template and the generation config. It loads with
  ``AutoModelForCausalLM.from_pretrained`` alone, and answers greedily exactly as the unmerged PEFT model.
- ``adapter``: the PEFT adapter with the tokenizer, its ``base_model_name_or_path`` pointing at the
  base model's hub id instead of a path on this machine, so it loads elsewhere. For the embedded
  default that is HuggingFaceTB/SmolLM2-135M-Instruct, whose original weights differ slightly from the
  Q4_1-dequantized ones togi trained on; the merged export has no such gap.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from togi.config import ADAPTER_METHODS, TrainConfig, load_config
from togi.models.device import plan_device
from togi.models.embedded import EMBEDDED_MODEL_NAME
from togi.models.loading import load_causal_lm
from togi.models.resolve import load_tokenizer, resolve_model

# The hub id of the embedded default, so an exported adapter names a base that exists outside this machine.
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


class ExportError(Exception):
    pass


def _run_config(run_dir: Path) -> TrainConfig:
    if not (run_dir / "config.yaml").is_file():
        raise ExportError(f"{run_dir} is not a togi run directory (no config.yaml)")
    return load_config(run_dir / "config.yaml")


def _replace_directory(staging: Path, out_dir: Path) -> Path:
    """Move a finished export into place, so a failed export never leaves half a directory."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.chmod(0o755)  # mkdtemp made it private
    staging.rename(out_dir)
    return out_dir


def export_merged(run_dir: Path, out_dir: Path) -> Path:
    config = _run_config(run_dir)
    if config.method in ("full", "freeze"):
        source_dir = run_dir / "model"  # already a plain model: copy it
        if not source_dir.is_dir():
            raise ExportError(f"{run_dir} has no model/ yet (did the run finish?)")
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
        shutil.copytree(source_dir, staging, dirs_exist_ok=True)
        return _replace_directory(staging, out_dir)
    if config.method not in ("lora", "dora", "qlora"):
        raise ExportError(f"{config.method} adapters cannot be merged into the weights; export them with --to adapter")
    adapter_dir = run_dir / "adapter"
    if not adapter_dir.is_dir():
        raise ExportError(f"{run_dir} has no adapter/ yet (did the run finish?)")
    from peft import PeftModel

    plan = plan_device("fp32" if config.method == "qlora" else "auto")  # QLoRA merges into a full-precision copy of the base
    model = PeftModel.from_pretrained(load_causal_lm(resolve_model(config.model), plan), adapter_dir).merge_and_unload()
    tokenizer = load_tokenizer(str(adapter_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _replace_directory(staging, out_dir)


def tuned_model(run_dir: Path) -> tuple[Any, Any]:
    """The run's final model in memory, with any LoRA/DoRA adapter merged in, and its tokenizer."""
    config = _run_config(run_dir)
    plan = plan_device("fp32")
    if config.method in ("full", "freeze"):
        return load_causal_lm(resolve_model(str(run_dir / "model")), plan), load_tokenizer(str(run_dir / "model"))
    if config.method not in ("lora", "dora", "qlora"):
        raise ExportError(f"{config.method} adapters cannot be merged into the weights")
    from peft import PeftModel

    adapter_dir = run_dir / "adapter"
    if not adapter_dir.is_dir():
        raise ExportError(f"{run_dir} has no adapter/ yet (did the run finish?)")
    model = PeftModel.from_pretrained(load_causal_lm(resolve_model(config.model), plan), adapter_dir).merge_and_unload()
    return model, load_tokenizer(str(adapter_dir))


def export_gguf(run_dir: Path, out_dir: Path, gguf_type: str = "f16") -> tuple[Path, dict[str, Any]]:
    """The run as a GGUF file, verified by loading it back with transformers on held-out prompts."""
    from togi.data.formats import load_dataset
    from togi.data.template import render_chat
    from togi.export.gguf_writer import GGUFExportError, verify_gguf, write_gguf

    model, tokenizer = tuned_model(run_dir)
    try:
        path = write_gguf(model, tokenizer, out_dir / f"model-{gguf_type}.gguf", gguf_type, name=run_dir.name)
    except GGUFExportError as error:
        raise ExportError(str(error)) from None
    held_out = run_dir / "data" / ("val.jsonl" if (run_dir / "data" / "val.jsonl").is_file() else "train.jsonl")
    examples = load_dataset(held_out).examples[:3]
    prompts = [render_chat(tokenizer, example.prompt_messages, add_generation_prompt=True) for example in examples]
    return path, verify_gguf(model, tokenizer, path, prompts)


def export_adapter(run_dir: Path, out_dir: Path) -> Path:
    config = _run_config(run_dir)
    if config.method not in ADAPTER_METHODS:
        raise ExportError(f"a {config.method} run has no adapter; export it with --to merged")
    adapter_dir = run_dir / "adapter"
    if not adapter_dir.is_dir():
        raise ExportError(f"{run_dir} has no adapter/ yet (did the run finish?)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    shutil.copytree(adapter_dir, staging, dirs_exist_ok=True)
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle of trainer settings: not part of an adapter
    settings_path = staging / "adapter_config.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    settings["base_model_name_or_path"] = EMBEDDED_HUB_ID if config.model == EMBEDDED_MODEL_NAME else config.model
    settings_path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return _replace_directory(staging, out_dir)
