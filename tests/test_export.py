"""Exports load in the libraries users already have, and answer as the trained model does."""

from __future__ import annotations

import json
import re

import pytest
import torch

from togi.config import load_config
from togi.train import train

from conftest import distinct_chats, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def trained(tmp_path, model_dir, method):
    data = write_jsonl(tmp_path / "train.jsonl", distinct_chats(16))
    config = load_config(None, [f"model={model_dir}", f"method={method}", f"data.train_file={data}", f"output_dir={tmp_path / 'run'}",
                                "training.max_steps=6", "training.batch_size=4", "training.gradient_accumulation=1",
                                "training.learning_rate=1e-2", "monitoring.samples=0", "data.val_ratio=0"])
    return train(config, log=lambda message: None).run_dir


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_export_loads_with_plain_transformers_and_answers_like_the_peft_model(cli, tmp_path, tiny_model_dir, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = trained(tmp_path, tiny_model_dir, method)
    result = cli("export", run_dir, "--to", "merged")
    assert result.exit_code == 0, result.output
    merged_dir = run_dir / "export" / "merged"
    assert not list(merged_dir.glob("adapter_*"))  # a plain model, no adapter files
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.chat_template  # the template travels with the model
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir / "adapter")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "在庫はありますか？"}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        expected = peft_model.generate(**ids, max_new_tokens=12, do_sample=False)
        actual = merged.generate(**ids, max_new_tokens=12, do_sample=False)
        assert torch.allclose(peft_model(**ids).logits, merged(**ids).logits, atol=1e-4)
    assert torch.equal(expected, actual)


def test_adapter_export_names_a_portable_base(cli, tmp_path, tiny_model_dir):
    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    assert cli("export", run_dir, "--to", "adapter", "--out", tmp_path / "portable").exit_code == 0
    settings = json.loads((tmp_path / "portable" / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == str(tiny_model_dir)  # the model the recipe named, as the user wrote it
    assert (tmp_path / "portable" / "adapter_model.safetensors").is_file() and (tmp_path / "portable" / "tokenizer.json").is_file()
    assert not (tmp_path / "portable" / "training_args.bin").exists()


def test_export_errors_are_one_line(cli, tmp_path):
    assert cli("export", tmp_path).exit_code == 2
    result = cli("export", tmp_path, "--to", "ollama")
    assert result.exit_code == 2 and "not built yet" in result.stderr


@pytest.mark.parametrize("quant,exact", [("f32", True), ("q8_0", False)])
def test_gguf_export_loads_back_in_transformers_with_the_same_answers(cli, tmp_path, tiny_model_dir, quant, exact):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    result = cli("export", run_dir, "--to", "gguf", "--quant", quant)
    assert result.exit_code == 0, result.output
    path = run_dir / "export" / "gguf" / f"model-{quant}.gguf"
    loaded_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert "<|im_start|>" in loaded_tokenizer.get_vocab() and loaded_tokenizer.chat_template  # vocabulary and template travel
    agreement = int(re.search(r"top-1 agreement (\d+)%", result.stdout).group(1))
    assert agreement == 100 if exact else agreement >= 80  # Q8_0 rounds weights; a random tiny model has near-ties
    if exact:
        assert "greedy answers equal 3/3" in result.stdout
        assert "largest logit difference 0" in result.stdout
        merged_dir = tmp_path / "merged"
        assert cli("export", run_dir, "--to", "merged", "--out", merged_dir).exit_code == 0
        reference = AutoModelForCausalLM.from_pretrained(merged_dir)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values()))
