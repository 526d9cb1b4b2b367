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
    result = cli("export", tmp_path)
    assert result.exit_code == 2 and "not a togi run directory" in result.stderr
    result = cli("export", tmp_path, "--to", "tflite")
    assert result.exit_code == 2 and "choose one of: merged, adapter, gguf, ollama, onnx, hub" in result.stderr
    result = cli("export", tmp_path, "--to", "hub")
    assert result.exit_code == 2 and "--to hub needs --repo-id" in result.stderr


def agreement(stdout: str, loader: str) -> dict:
    """The comparison ``togi export`` printed for one loader (transformers or llama.cpp)."""
    found = re.search(rf"loaded back with {re.escape(loader)} on \d+ held-out prompts: tokenization equal (\d+/\d+), "
                      r"top-1 agreement (\d+)%, largest logit difference ([\d.e+-]+), greedy answers equal (\d+/\d+)", stdout)
    assert found, stdout
    return {"tokenization": found.group(1), "top1": int(found.group(2)), "largest": float(found.group(3)), "greedy": found.group(4)}


@pytest.mark.parametrize("quant,exact", [("f32", True), ("q8_0", False)])
def test_gguf_export_loads_back_in_transformers_with_the_same_answers(cli, tmp_path, tiny_model_dir, quant, exact):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    result = cli("export", run_dir, "--to", "gguf", "--quant", quant)
    assert result.exit_code == 0, result.output
    path = run_dir / "export" / "gguf" / f"model-{quant}.gguf"
    loaded_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert "<|im_start|>" in loaded_tokenizer.get_vocab() and loaded_tokenizer.chat_template  # vocabulary and template travel
    check = agreement(result.stdout, "transformers")
    assert check["top1"] == 100 if exact else check["top1"] >= 80  # Q8_0 rounds weights; a random tiny model has near-ties
    assert check["tokenization"] == "3/3"
    assert "the chat template and stop token '<|im_end|>' match training" in result.stdout
    if exact:
        assert check["greedy"] == "3/3" and check["largest"] == 0
        merged_dir = tmp_path / "merged"
        assert cli("export", run_dir, "--to", "merged", "--out", merged_dir).exit_code == 0
        reference = AutoModelForCausalLM.from_pretrained(merged_dir)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        assert all(torch.equal(a, b) for a, b in zip(reference.state_dict().values(), loaded.state_dict().values()))


def test_export_refuses_a_template_changed_since_training_and_writes_nothing(cli, tmp_path, tiny_model_dir):
    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    settings_path = run_dir / "adapter" / "tokenizer_config.json"
    template_path = run_dir / "adapter" / "chat_template.jinja"
    if template_path.is_file():
        template_path.write_text(template_path.read_text().replace("<|im_start|>", "<|im_start|> "))
    else:
        settings = json.loads(settings_path.read_text())
        settings["chat_template"] = settings["chat_template"].replace("<|im_start|>", "<|im_start|> ")
        settings_path.write_text(json.dumps(settings))
    for target in ("gguf", "merged", "ollama"):
        result = cli("export", run_dir, "--to", target)
        assert result.exit_code == 2
        assert "template-consistency check failed" in result.stderr and "differs from the training template at character" in result.stderr
        assert not (run_dir / "export" / target).exists() or not any((run_dir / "export" / target).iterdir())


def test_a_merged_model_stops_at_the_token_that_ends_assistant_turns(cli, tmp_path):
    """A tokenizer whose EOS is not the template's end-of-turn token: the merged model must still stop after an answer."""
    from transformers import GenerationConfig

    from conftest import build_tiny_model, build_tokenizer

    model_dir = tmp_path / "model"
    tokenizer = build_tokenizer()
    tokenizer.eos_token = "<unk>"
    tokenizer.save_pretrained(model_dir)
    build_tiny_model(tokenizer).save_pretrained(model_dir)
    run_dir = trained(tmp_path, model_dir, "lora")
    assert cli("export", run_dir, "--to", "merged").exit_code == 0
    stops = GenerationConfig.from_pretrained(run_dir / "export" / "merged").eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (stops if isinstance(stops, list) else [stops])


def test_ollama_export_writes_a_modelfile_whose_template_renders_like_the_chat_template(cli, tmp_path, tiny_model_dir):
    from togi.export.chat_format import CHECK_CONVERSATIONS
    from togi.export.ollama import parse_modelfile
    from transformers import AutoTokenizer

    from conftest import GO_TEMPLATE_MISSING, chat, go_template_available, ollama_messages, render_go_template

    records = [chat(f"注文番号{i}の状況は？", f"注文番号{i}は発送済みです。", system="あなたは通販サイトのサポート担当です。") for i in range(16)]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    config = load_config(None, [f"model={tiny_model_dir}", "method=lora", f"data.train_file={data}", f"output_dir={tmp_path / 'run'}",
                                "training.max_steps=2", "training.batch_size=4", "monitoring.samples=0", "data.val_ratio=0"])
    run_dir = train(config, log=lambda message: None).run_dir
    result = cli("export", run_dir, "--to", "ollama")
    assert result.exit_code == 0, result.output
    out = run_dir / "export" / "ollama"
    modelfile = parse_modelfile((out / "Modelfile").read_text(encoding="utf-8"))
    assert modelfile["FROM"] == "./model-q8_0.gguf" and (out / "model-q8_0.gguf").is_file()
    assert modelfile["SYSTEM"] == "あなたは通販サイトのサポート担当です。"  # constant across the training data
    assert modelfile["PARAMETER"]["stop"] == ["<|im_end|>"]
    assert modelfile["PARAMETER"]["temperature"] == ["0.3"] and modelfile["PARAMETER"]["num_ctx"] == ["512"]  # the tiny model's context
    assert "ollama create" in result.stdout
    if not go_template_available():
        pytest.skip(GO_TEMPLATE_MISSING)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "adapter")
    rendered = render_go_template(modelfile["TEMPLATE"], [ollama_messages(c) for c in CHECK_CONVERSATIONS])
    for conversation, text in zip(CHECK_CONVERSATIONS, rendered):
        assert text == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def test_ollama_export_omits_system_when_the_training_prompts_differ(cli, tmp_path, tiny_model_dir):
    from togi.export.ollama import parse_modelfile

    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    assert cli("export", run_dir, "--to", "ollama", "--quant", "q4_0", "--no-verify").exit_code == 0
    modelfile = parse_modelfile((run_dir / "export" / "ollama" / "Modelfile").read_text(encoding="utf-8"))
    assert "SYSTEM" not in modelfile and modelfile["FROM"] == "./model-q4_0.gguf"


def test_k_quants_without_llama_cpp_say_how_to_get_it(cli, tmp_path, tiny_model_dir, without_llama_cpp):
    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    result = cli("export", run_dir, "--to", "gguf", "--quant", "q4_k_m")
    assert result.exit_code == 2 and "pip install 'togi[llama]'" in result.stderr


@pytest.mark.llama_cpp
@pytest.mark.parametrize("quant", ["f32", "q8_0", "q4_k_m"])
def test_gguf_in_llama_cpp_tokenizes_and_answers_like_the_merged_model(cli, tmp_path, tiny_model_dir, quant):
    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    result = cli("export", run_dir, "--to", "gguf", "--quant", quant)
    assert result.exit_code == 0, result.output
    check = agreement(result.stdout, "llama.cpp")
    assert check["tokenization"] == "3/3"  # vocabulary, merges, pre-tokenizer and special tokens read the same
    if quant == "f32":
        assert check["top1"] == 100 and check["largest"] < 0.05  # llama.cpp keeps its key/value cache in f16
        assert check["greedy"] in ("2/3", "3/3")  # 16 free-running tokens of a random tiny model: one near-tie may flip
    else:  # quantised weights on a random tiny model flip near-ties; both runtimes must read the same weights
        assert check["top1"] >= 50 and abs(check["top1"] - agreement(result.stdout, "transformers")["top1"]) <= 10


def test_onnx_export_of_a_run_matches_pytorch_in_onnxruntime(cli, tmp_path, tiny_model_dir):
    import numpy as np
    import onnxruntime
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    result = cli("export", run_dir, "--to", "onnx")
    assert result.exit_code == 0, result.output
    out = run_dir / "export" / "onnx"
    assert cli("export", run_dir, "--to", "merged", "--out", tmp_path / "merged").exit_code == 0
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(out)  # the tokenizer travels with the graph
    batch = tokenizer(["在庫はありますか？", "The quick brown fox jumps over the lazy dog."], padding=True, return_tensors="np")
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    logits = session.run(["logits"], {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]
    with torch.no_grad():
        expected = reference(**{key: torch.tensor(value) for key, value in batch.items()}).logits.numpy()
    keep = batch["attention_mask"].astype(bool)
    assert np.abs(logits[keep] - expected[keep]).max() < 1e-4


def test_onnx_export_of_a_classification_model_matches_pytorch(cli, tmp_path, tokenizer):
    import numpy as np
    import onnxruntime
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id, num_labels=3,
                         id2label={0: "ネガティブ", 1: "ニュートラル", 2: "ポジティブ"})
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path / "classifier")
    tokenizer.save_pretrained(tmp_path / "classifier")
    result = cli("export", tmp_path / "classifier", "--to", "onnx", "--out", tmp_path / "onnx")
    assert result.exit_code == 0, result.output
    assert "exported ONNX (classification)" in result.stdout
    batch = tokenizer(["音質が最高", "The battery died in a day and support never answered."], padding=True, return_tensors="np")
    logits = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx")).run(
        ["logits"], {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]})[0]
    with torch.no_grad():
        expected = model(**{key: torch.tensor(value) for key, value in batch.items()}).logits.numpy()
    assert logits.shape == (2, 3) and np.abs(logits - expected).max() < 1e-5


def test_hub_dry_run_lists_the_files_and_uploads_nothing(cli, tmp_path, tiny_model_dir):
    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    result = cli("export", run_dir, "--to", "hub", "--repo-id", "me/tiny", "--private", "--dry-run", "--hub-url", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    assert "would upload" in result.stdout and "a private repository me/tiny" in result.stdout
    assert "model.safetensors" in result.stdout and "README.md" in result.stdout and "dry run: nothing was uploaded" in result.stdout


@pytest.mark.parametrize("upload", ["merged", "adapter"])
def test_hub_upload_sends_the_export_and_a_model_card_to_a_hub_server(cli, tmp_path, tiny_model_dir, upload):
    """The real huggingface_hub client uploads to a loopback server that speaks the Hub's upload API (no network here)."""
    from local_hub import local_hub

    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    with local_hub(tmp_path / "hub") as (url, hub):
        result = cli("export", run_dir, "--to", "hub", "--repo-id", "me/tiny", "--private", "--upload", upload,
                     "--hub-url", url, "--token", "hf_local_test_token")
        assert result.exit_code == 0, result.output
        assert hub.repos == {"me/tiny": {"visibility": "private"}}
        failed = cli("export", run_dir, "--to", "hub", "--repo-id", "me/tiny", "--hub-url", url, "--token", "wrong",
                     "--out", tmp_path / "second")
        assert failed.exit_code == 2 and "upload to me/tiny failed" in failed.stderr
    exported, uploaded = run_dir / "export" / "hub", tmp_path / "hub" / "me" / "tiny"
    names = sorted(str(path.relative_to(exported)) for path in exported.rglob("*") if path.is_file())
    assert names == sorted(str(path.relative_to(uploaded)) for path in uploaded.rglob("*") if path.is_file())
    assert all((exported / name).read_bytes() == (uploaded / name).read_bytes() for name in names)
    card = (uploaded / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nbase_model: ") and f"library_name: {'peft' if upload == 'adapter' else 'transformers'}" in card
    assert ("adapter_model.safetensors" if upload == "adapter" else "model.safetensors") in names


@pytest.mark.parametrize("runtime", ["transformers", pytest.param("llama.cpp", marks=pytest.mark.llama_cpp)])
def test_qwen2_gguf_with_attention_biases_round_trips(tmp_path, tokenizer, runtime):
    """Qwen2 is written as llama.cpp's qwen2 architecture: query/key/value biases, no rotary permutation."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from togi.export import llama_cpp
    from togi.export.gguf_writer import verify_gguf, write_gguf

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.2,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:  # non-zero biases, so a lost or misplaced bias shows
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                projection.bias.normal_(0, 0.5)
    path = write_gguf(model, tokenizer, tmp_path / "qwen2.gguf", "f32")
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": "在庫はありますか？"}], tokenize=False, add_generation_prompt=True)]
    if runtime == "transformers":
        assert verify_gguf(model, tokenizer, path, prompts) == {"max_abs_logit_diff": 0.0, "top1_agreement": 1.0, "greedy_equal": "1/1",
                                                               "tokenization_equal": "1/1"}
    else:
        in_llama_cpp = llama_cpp.verify(model, tokenizer, path, prompts)
        assert in_llama_cpp["top1_agreement"] == 1.0 and in_llama_cpp["max_abs_logit_diff"] < 0.05


def test_a_qlora_run_trained_on_a_gpu_is_evaluated_and_exported_on_this_cpu(cli, tmp_path, tiny_model_dir):
    """Reading a run's recipe does not ask for the GPU its training needed: a QLoRA adapter is a LoRA adapter."""
    import yaml

    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    recipe = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**recipe, "method": "qlora"}, allow_unicode=True), encoding="utf-8")
    held_out = write_jsonl(tmp_path / "test.jsonl", distinct_chats(4))
    evaluated = cli("eval", run_dir, "--data", held_out, "--out", tmp_path / "eval", "--max-new-tokens", "4")
    assert evaluated.exit_code == 0, evaluated.output
    assert (tmp_path / "eval" / "records.jsonl").is_file()
    exported = cli("export", run_dir, "--to", "merged")
    assert exported.exit_code == 0, exported.output
    assert (run_dir / "export" / "merged" / "config.json").is_file()
