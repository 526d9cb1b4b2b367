"""``togi export FOLDER --to onnx`` of a multi-adapter export: one ONNX graph of the base whose LoRA weights are
inputs, and one onnxruntime adapter file per adapter (seed 002's switchable adapters, as Olive's
``generate-adapter`` makes them), so one loaded session answers with any adapter, chosen per run:

    OUT/model.onnx               input_ids, attention_mask [, the LoRA weights] -> logits
    OUT/adapters/NAME.onnx_adapter
    OUT/togi-onnx.json           the inputs, the adapters and how closely each reproduces PyTorch

    session = onnxruntime.InferenceSession("OUT/model.onnx")
    adapter = onnxruntime.LoraAdapter(); adapter.Load("OUT/adapters/reviews.onnx_adapter")
    options = onnxruntime.RunOptions(); options.add_active_adapter(adapter)
    logits = session.run(["logits"], {"input_ids": ..., "attention_mask": ...}, options)[0]

The graph is traced once with the LoRA weights as arguments of the forward (``torch.func.functional_call``), with
the rank as a dynamic axis, so adapters of any rank fit; each adapter's scale (alpha / r) is folded into its B
matrices, and the graph scales by 1. Each LoRA input also has a default of zeros (rank 1): a run without an
active adapter is the base model. Every adapter, and the base, is checked against PEFT on held-out prompts.
Adapters must adapt the same modules (the graph's inputs); DoRA's magnitude vectors are not supported.
"""

from __future__ import annotations

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
from togi.export.onnx_export import TOLERANCE, require_onnx
from togi.models.adapter_folder import read_manifest
from togi.models.resolve import load_tokenizer

TRACED = "adapter"  # the name the traced graph's adapter has in PEFT while it is traced
CHECK_TEXTS = ["返品の送料は誰が負担しますか？", "この商品の色を教えてください。", "The battery lasts two days."]


@dataclass
class ONNXAdapterExport:
    directory: Path
    adapters: dict[str, float]  # name -> largest logit difference to PEFT ("base": no adapter active)


def input_name(parameter: str) -> str:
    """``base_model.model.model.layers.0.self_attn.q_proj.lora_A.adapter.weight`` -> ``layers.0.self_attn.q_proj.lora_A``."""
    return parameter.replace("base_model.model.", "", 1).removeprefix("model.").replace(f".{TRACED}.weight", "")


def export_onnx_adapters(folder: Path, out_dir: Path) -> ONNXAdapterExport:
    require_onnx()
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    manifest = read_manifest(folder)
    names = list(manifest["adapters"])
    paths = {name: folder / manifest["adapters"][name]["path"] for name in names}
    for name, path in paths.items():
        settings = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        if settings.get("peft_type") != "LORA" or settings.get("use_dora"):
            raise ExportError(f"{name} is not a plain LoRA adapter ({'DoRA' if settings.get('use_dora') else settings.get('peft_type')}); "
                              "the ONNX graph takes LoRA's A and B matrices as inputs", "leave that adapter out of the multi-adapter export")
    tokenizer = load_tokenizer(str(folder / manifest["base"]))
    base = AutoModelForCausalLM.from_pretrained(str(folder / manifest["base"]), dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, str(paths[names[0]]), adapter_name=TRACED).eval()
    for name in names:
        model.load_adapter(str(paths[name]), adapter_name=name)
    traced = [parameter for parameter, _ in model.named_parameters() if f".{TRACED}.weight" in parameter and ".lora_" in parameter]
    weights = {name: _adapter_weights(model, name, traced) for name in names}
    for layer in _lora_layers(model):
        layer.scaling[TRACED] = 1.0  # each adapter's scale is in its B matrices

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        _trace(model, tokenizer, traced, weights[names[0]], staging / "model.onnx")
        (staging / "adapters").mkdir()
        for name in names:
            _write_adapter([input_name(parameter) for parameter in traced], weights[name], staging / "adapters" / f"{name}.onnx_adapter")
        import onnxruntime

        session = onnxruntime.InferenceSession(str(staging / "model.onnx"), providers=["CPUExecutionProvider"])  # one for every check
        differences = {name or "base": _compare(model, session, name, tokenizer, staging) for name in [None, *names]}
        worst = max(differences, key=differences.get)
        if differences[worst] > TOLERANCE:
            raise ExportError(f"onnxruntime with {worst} differs from PEFT by up to {differences[worst]:.3g} (more than {TOLERANCE:g}); "
                              "nothing was exported", "export each adapter's run with --to onnx (merged) instead")
        tokenizer.save_pretrained(staging)
        base.config.save_pretrained(staging)
        (staging / "togi-onnx.json").write_text(json.dumps({
            "task": "causal-lm", "inputs": ["input_ids", "attention_mask", *(input_name(p) for p in traced)], "outputs": ["logits"],
            "adapters": {name: f"adapters/{name}.onnx_adapter" for name in names}, "max_abs_logit_diff": differences}, indent=2) + "\n",
            encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ONNXAdapterExport(replace_directory(staging, out_dir), differences)


def _lora_layers(model: Any) -> list[Any]:
    return [module for module in model.modules() if hasattr(module, "lora_A") and hasattr(module, "scaling")]


def _adapter_weights(model: Any, name: str, traced: list[str]) -> list[Any]:
    """An adapter's A and B matrices in the order of the traced inputs, with its scale folded into B."""
    parameters = dict(model.named_parameters())
    scales = {}
    for module_name, module in model.named_modules():
        if hasattr(module, "lora_A") and hasattr(module, "scaling") and name in module.scaling:
            scales[module_name] = module.scaling[name]
    weights = []
    for parameter in traced:
        own = parameter.replace(f".{TRACED}.weight", f".{name}.weight")
        if own not in parameters:
            raise ExportError(f"the adapter {name} does not adapt {input_name(parameter).rsplit('.', 1)[0]}, which another adapter does; "
                              "one ONNX graph needs every adapter on the same modules", "train the adapters with the same lora.targets")
        value = parameters[own].detach().float().clone()
        if ".lora_B" in parameter:
            value *= scales[parameter.rsplit(".lora_B", 1)[0]]
        weights.append(value)
    extra = [p for p in parameters if f".{name}.weight" in p and ".lora_" in p and p.replace(f".{name}.weight", f".{TRACED}.weight") not in traced]
    if extra:
        raise ExportError(f"the adapter {name} adapts modules the others do not ({input_name(extra[0])}); one ONNX graph needs every "
                          "adapter on the same modules", "train the adapters with the same lora.targets")
    return weights


def _trace(model: Any, tokenizer: Any, traced: list[str], example_weights: list[Any], path: Path) -> None:
    import onnx
    import torch
    from onnx import numpy_helper
    from torch.func import functional_call

    class LogitsWithAdapterInputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, *lora: Any) -> Any:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
            return functional_call(self.model, dict(zip(traced, lora)), (), inputs, strict=False).logits

    model.set_adapter(TRACED)
    example = tokenizer(["togi", "研ぎ澄ます"], padding=True, return_tensors="pt", add_special_tokens=False)
    batch, sequence, rank = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("rank", min=1, max=4096)
    dynamic = {"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence},
               "lora": tuple({0: rank} if ".lora_A" in parameter else {1: rank} for parameter in traced)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        torch.onnx.export(LogitsWithAdapterInputs().eval(), (example["input_ids"], example["attention_mask"], *example_weights), str(path),
                          input_names=["input_ids", "attention_mask", *(input_name(p) for p in traced)], output_names=["logits"],
                          dynamo=True, dynamic_shapes=dynamic, verbose=False)
    graph = onnx.load(str(path), load_external_data=False)  # large weights stay in the exporter's model.onnx.data beside it
    for parameter, weight in zip(traced, example_weights):  # zeros of rank 1 by default: no adapter is the base model
        shape = (1, weight.shape[1]) if ".lora_A" in parameter else (weight.shape[0], 1)
        graph.graph.initializer.append(numpy_helper.from_array(torch.zeros(shape).numpy(), input_name(parameter)))
    onnx.save(graph, str(path))


def _write_adapter(inputs: list[str], weights: list[Any], path: Path) -> None:
    """An onnxruntime adapter file: each graph input's value for this adapter."""
    import onnxruntime

    adapter = onnxruntime.AdapterFormat()
    adapter.set_adapter_version(1)
    adapter.set_model_version(1)
    adapter.set_parameters({name: onnxruntime.OrtValue.ortvalue_from_numpy(weight.numpy()) for name, weight in zip(inputs, weights)})
    adapter.export_adapter(str(path))


def _compare(model: Any, session: Any, name: str | None, tokenizer: Any, staging: Path) -> float:
    """The largest logit difference between onnxruntime (``name``'s adapter active, or none) and PEFT on CHECK_TEXTS."""
    import contextlib

    import numpy as np
    import onnxruntime
    import torch

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(CHECK_TEXTS, padding=True, return_tensors="pt", add_special_tokens=False)
    options = onnxruntime.RunOptions()
    if name is not None:
        adapter = onnxruntime.LoraAdapter()
        adapter.Load(str(staging / "adapters" / f"{name}.onnx_adapter"))
        options.add_active_adapter(adapter)
        model.set_adapter(name)
    actual = session.run(["logits"], {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}, options)[0]
    with torch.no_grad(), (model.disable_adapter() if name is None else contextlib.nullcontext()):
        expected = model(**batch, use_cache=False).logits.float().numpy()
    keep = batch["attention_mask"].numpy().astype(bool)
    return float(np.abs(expected[keep] - actual[keep]).max())
