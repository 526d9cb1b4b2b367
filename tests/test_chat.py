"""togi chat streams answers from a run, a model directory or a GGUF file, with the training template."""

from __future__ import annotations

import queue
import threading

import pytest
import torch

from togi.export.chat import load_chat_model
from togi.models.chat_model import ChatSettings
from togi.models.streaming import Answer, generate_on_thread, read_answer

from test_export import trained

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
QUESTION = "在庫はありますか？"


def greedy_answer(model_dir, question: str, max_new_tokens: int) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    text = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    return text.rstrip("\ufffd").strip()  # togi drops a character cut in half by the token limit


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_dir):
    return trained(tmp_path_factory.mktemp("chat"), tiny_model_dir, "lora")


def test_the_streamed_pieces_add_up_to_the_greedy_answer_of_the_merged_model(tiny_run, tmp_path, cli):
    """That the pieces arrive one by one is checked on SmolLM2 (test_export_embedded): a random tiny model's
    output has no word boundaries, so the streamer holds it until the end."""
    chat_model = load_chat_model(str(tiny_run))
    pieces = list(chat_model.stream([{"role": "user", "content": QUESTION}], ChatSettings(max_new_tokens=12)))
    assert cli("export", tiny_run, "--to", "merged", "--out", tmp_path / "merged").exit_code == 0
    assert "".join(pieces).strip() == greedy_answer(tmp_path / "merged", QUESTION, 12)


def test_one_shot_prompt_prints_the_answer(cli, tiny_run, tmp_path):
    result = cli("chat", tiny_run, "-p", QUESTION, "--max-new-tokens", "12")
    assert result.exit_code == 0, result.output
    assert cli("export", tiny_run, "--to", "merged", "--out", tmp_path / "merged").exit_code == 0
    assert result.stdout.strip() == greedy_answer(tmp_path / "merged", QUESTION, 12)


def test_interactive_session_keeps_history_until_reset(tiny_run):
    from typer.testing import CliRunner

    from togi.cli.main import app

    result = CliRunner().invoke(app, ["chat", str(tiny_run), "--max-new-tokens", "6"],
                                input=f"{QUESTION}\n/reset\n{QUESTION}\n/system 短く答えてください。\n{QUESTION}\n/exit\n")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("you> model> ")]
    assert len(lines) == 3 and lines[0] == lines[1]  # after /reset the same question gets the same greedy answer
    assert "(conversation cleared)" in result.stdout and "(system prompt set; conversation cleared)" in result.stdout


@pytest.mark.parametrize("backend", ["transformers", pytest.param("llama.cpp", marks=pytest.mark.llama_cpp)])
def test_a_gguf_file_chats_with_the_template_it_carries(cli, tiny_run, backend):
    assert cli("export", tiny_run, "--to", "gguf", "--quant", "f32", "--no-verify").exit_code == 0
    path = tiny_run / "export" / "gguf" / "model-f32.gguf"
    chat_model = load_chat_model(str(path), prefer_llama_cpp=backend == "llama.cpp")
    assert chat_model.backend == backend and chat_model.stop_token == "<|im_end|>"
    assert chat_model.prompt([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    chat_model.close()
    args = ["chat", path, "-p", QUESTION, "--max-new-tokens", "8"] + (["--transformers"] if backend == "transformers" else [])
    result = cli(*args)
    assert result.exit_code == 0 and result.stdout.strip(), result.output


def test_a_missing_model_is_one_line(cli, tmp_path):
    result = cli("chat", tmp_path / "nothing-here")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_a_gguf_beside_its_modelfile_uses_the_modelfiles_system_prompt(cli, tmp_path, tiny_model_dir):
    from togi.config import load_config
    from togi.train import train

    from conftest import chat, write_jsonl

    records = [chat(f"注文番号{i}の状況は？", f"注文番号{i}は発送済みです。", system="丁寧に答えてください。") for i in range(12)]
    config = load_config(None, [f"model={tiny_model_dir}", f"data.train_file={write_jsonl(tmp_path / 'train.jsonl', records)}",
                                f"output_dir={tmp_path / 'run'}", "training.max_steps=1", "monitoring.samples=0", "data.val_ratio=0"])
    run_dir = train(config, log=lambda message: None).run_dir
    assert cli("export", run_dir, "--to", "ollama", "--no-verify").exit_code == 0
    chat_model = load_chat_model(str(run_dir / "export" / "ollama" / "model-q8_0.gguf"), prefer_llama_cpp=False)
    assert chat_model.system == "丁寧に答えてください。"


def test_a_reader_that_stops_reading_stops_the_generation(tiny_model_dir):
    """The streaming loop ChatModel shares with the server: closing the reader cancels generate() on its thread."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt_ids = tokenizer(QUESTION, add_special_tokens=False)["input_ids"]
    events, cancelled, limit = queue.Queue(), threading.Event(), 20_000
    worker = generate_on_thread(model, prompt_ids, lambda token, reason: events.put((token, reason)), cancelled, max_new_tokens=limit,
                                stop_ids=[], pad_id=0, sampling={"do_sample": False, "min_new_tokens": limit})  # never ends by itself
    pieces = read_answer(Answer(tokenizer, None, len(prompt_ids)), events.get, cancelled.set)
    assert isinstance(next(pieces), str)
    pieces.close()
    worker.join(timeout=60)
    assert not worker.is_alive()
    left = [events.get_nowait() for _ in range(events.qsize())]
    assert left[-1] == (None, "stop") and len(left) < limit / 2


def test_an_answer_closed_early_leaves_no_generation_running(tiny_model_dir):
    """`togi chat` exits right after its answer: a generate() thread still inside torch when the interpreter exits
    aborts the process ("terminate called without an active exception"), so ChatModel waits for it to stop."""
    chat_model = load_chat_model(str(tiny_model_dir), prefer_llama_cpp=False)
    pieces = chat_model.stream([{"role": "user", "content": QUESTION}], ChatSettings(max_new_tokens=5000, temperature=0.0))
    assert isinstance(next(pieces), str)
    pieces.close()
    assert not [thread for thread in threading.enumerate() if thread.name == "togi-generate-one"]
