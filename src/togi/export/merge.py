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

from togi.export import ExportError
from togi.export.consistency import TrainingChat, require_consistent, stop_mismatch, template_mismatch, tokens_of
from togi.export.hub import base_model_id
from togi.models.resolve import load_tokenizer
from togi.runs import Run


def replace_directory(staging: Path, out_dir: Path) -> Path:
    """Move a finished export into place, so a failed export never leaves half a directory."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging.chmod(0o755)  # mkdtemp made it private
    staging.rename(out_dir)
    return out_dir


def stop_at_end_of_turn(config: Any, tokenizer: Any, training: TrainingChat) -> None:
    """Make a generation config stop where training taught the model to stop: at the EOS token and at the token
    that ends an assistant turn in the template, when that is a different one."""
    stops = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    stops = [token_id for token_id in [*stops, tokenizer.eos_token_id, training.end_of_turn_id] if token_id is not None]
    config.eos_token_id = list(dict.fromkeys(stops)) if len(set(stops)) > 1 else stops[0]
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id


def check_saved_model(directory: Path, training: TrainingChat, where: str) -> None:
    """Reload what was saved and refuse it unless its template and stop tokens match training."""
    from transformers import GenerationConfig

    tokenizer = load_tokenizer(str(directory))
    stops = tokens_of(tokenizer, GenerationConfig.from_pretrained(directory).eos_token_id)
    require_consistent([template_mismatch(where, tokenizer.chat_template, training), stop_mismatch(where, stops, training)])


def export_merged(run_dir: Path, out_dir: Path) -> Path:
    model, tokenizer = tuned_model(run_dir)
    training = TrainingChat.of_run(run_dir, tokenizer)
    require_consistent([template_mismatch(f"the tokenizer saved in {run_dir}", tokenizer.chat_template, training)])
    stop_at_end_of_turn(model.generation_config, tokenizer, training)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        model.generation_config.save_pretrained(staging)
        check_saved_model(staging, training, "the merged model")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace_directory(staging, out_dir)


def tuned_model(run_dir: Path) -> tuple[Any, Any]:
    """The run's final model in memory, in float32, with any LoRA/DoRA adapter merged in, and its tokenizer."""
    return Run.open(run_dir).load_trained_model(merge=True, precision="fp32")


def export_adapter(run_dir: Path, out_dir: Path) -> Path:
    run = Run.open(run_dir)
    config = run.config
    if not config.traits.adapter:
        raise ExportError(f"a {config.method} run has no adapter; export it with --to merged",
                          "--to merged writes the whole trained model, which loads with AutoModelForCausalLM")
    adapter_dir = run.output_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    shutil.copytree(adapter_dir, staging, dirs_exist_ok=True)
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle of trainer settings: not part of an adapter
    settings_path = staging / "adapter_config.json"
    settings = json.loads(settings_path.read_text(encoding="utf-8"))
    settings["base_model_name_or_path"] = base_model_id(config.model)
    settings_path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return replace_directory(staging, out_dir)
