"""``togi export --to onnx``: a causal LM (a run, merged) or a classification model as ONNX, checked in onnxruntime.

The graph takes ``input_ids`` and ``attention_mask`` with dynamic batch and sequence axes and returns
``logits``; it is traced by torch's own exporter (``torch.onnx.export(dynamo=True)``). Hugging Face's
optimum would add key/value-cache inputs, but optimum-onnx pins transformers below 5, which togi
cannot use, so the causal graph recomputes the prefix at each step: right for scoring and
classification, slower than optimum's for long generation. The output folder holds ``model.onnx``
with the tokenizer and config beside it, and the export is refused unless onnxruntime reproduces the
PyTorch logits.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from togi.export import ExportError
from togi.export.merge import replace_directory
from togi.runs import Run

TOLERANCE = 1e-3  # largest logit difference accepted between onnxruntime and PyTorch (fp32)
INSTALL_HINT = "install the ONNX exporter and runtime with: pip install 'togi[onnx]'"


@dataclass
class ONNXExport:
    directory: Path
    task: str  # "causal-lm" or "classification"
    max_abs_logit_diff: float
    top1_agreement: float


def logits_only(model: Any) -> Any:
    """``model`` wrapped so the traced graph is (input_ids, attention_mask) -> logits, without a key/value cache."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return LogitsOnly().eval()


def load_for_onnx(source: Path) -> tuple[Any, Any, str]:
    """The model to export: a run's tuned model (LoRA merged), or a saved causal-LM or classification model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    from togi.export.merge import tuned_model
    from togi.models.resolve import load_tokenizer

    if Run.is_run(source):
        model, tokenizer = tuned_model(source)
        return model, tokenizer, "causal-lm"
    if not (source / "config.json").is_file():
        raise ExportError(f"{source} is neither a togi run directory nor a saved model (no config.yaml or config.json)",
                          "pass a run directory, or a model directory saved with save_pretrained")
    architectures = AutoConfig.from_pretrained(source).architectures or []
    if any(name.endswith("ForSequenceClassification") for name in architectures):
        return AutoModelForSequenceClassification.from_pretrained(source).eval(), load_tokenizer(str(source)), "classification"
    return AutoModelForCausalLM.from_pretrained(source).eval(), load_tokenizer(str(source)), "causal-lm"


def check_texts(source: Path, tokenizer: Any) -> list[str]:
    if Run(source).data_dir.is_dir():
        from togi.export.gguf import held_out_prompts

        return held_out_prompts(source, tokenizer)
    return ["返品の送料は誰が負担しますか？", "The battery lasts two days, which is great.", "ラベル: ポジティブ"]


def compare_with_onnxruntime(model: Any, tokenizer: Any, path: Path, texts: list[str]) -> tuple[float, float]:
    """Largest logit difference and top-1 agreement between onnxruntime and PyTorch on a padded batch of ``texts``."""
    import numpy as np
    import onnxruntime
    import torch

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(["logits"], {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()})[0]
    with torch.no_grad():
        expected = model(**batch, use_cache=False).logits.float().numpy()
    if expected.ndim == 3:  # causal LM: compare real tokens only, not padding
        keep = batch["attention_mask"].numpy().astype(bool)
        expected, actual = expected[keep], actual[keep]
    return float(np.abs(expected - actual).max()), float((expected.argmax(-1) == actual.argmax(-1)).mean())


def require_onnx() -> None:
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
        raise ExportError(f"ONNX export needs onnx, onnxscript and onnxruntime; {INSTALL_HINT}", "then run the export again")


def export_onnx(source: Path, out_dir: Path) -> ONNXExport:
    require_onnx()
    import torch

    model, tokenizer, task = load_for_onnx(source)
    model = model.float().eval()
    example = tokenizer(["togi", "研ぎ澄ます"], padding=True, return_tensors="pt", add_special_tokens=False) \
        if tokenizer.pad_token else tokenizer(["togi"], return_tensors="pt", add_special_tokens=False)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" notes are not the user's concern
            torch.onnx.export(logits_only(model), (example["input_ids"], example["attention_mask"]), str(staging / "model.onnx"),
                              input_names=["input_ids", "attention_mask"], output_names=["logits"], dynamo=True,
                              dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
                              verbose=False)
        difference, agreement = compare_with_onnxruntime(model, tokenizer, staging / "model.onnx", check_texts(source, tokenizer))
        if difference > TOLERANCE:
            raise ExportError(f"onnxruntime's logits differ from PyTorch's by up to {difference:.3g} (more than {TOLERANCE:g}); "
                              "nothing was exported",
                              "this model does not convert faithfully to ONNX; export it with --to merged or --to gguf instead")
        tokenizer.save_pretrained(staging)
        model.config.save_pretrained(staging)
        if task == "causal-lm" and getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(staging)
        (staging / "togi-onnx.json").write_text(json.dumps({"task": task, "inputs": ["input_ids", "attention_mask"],
                                                             "outputs": ["logits"], "max_abs_logit_diff": difference,
                                                             "top1_agreement": agreement}, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ONNXExport(replace_directory(staging, out_dir), task, difference, agreement)
