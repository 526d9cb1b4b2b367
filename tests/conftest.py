"""Shared fixtures: tiny tokenizers built in-process (no downloads), file helpers and the CLI runner."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from togi.cli.main import app

REPO = Path(__file__).resolve().parents[1]
BROKEN = REPO / "examples" / "broken"
DEMO = REPO / "examples" / "reviews" / "reviews.jsonl"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Like SmolLM2's: inserts a default system prompt when the conversation has none.
CHATML_WITH_DEFAULT_SYSTEM = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Like Llama 2's: refuses conversations that do not alternate user/assistant.
ALTERNATING_ONLY = (
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + '<|im_end|>' }}{% endif %}{% endfor %}"
)

_CORPUS = [
    "返品の送料は誰が負担しますか？ 初期不良の場合は当社が負担いたします。",
    "この炊飯器は玄米モードがありますか？ はい、玄米モードと雑穀米モードを搭載しています。",
    "The quick brown fox jumps over the lazy dog. system user assistant",
    "ラベル: ポジティブ 理由: 音質と装着感の両方を高く評価しているため。",
] * 20


def build_tokenizer(chat_template: str | None = CHATML):
    """A byte-level BPE tokenizer trained in a fraction of a second, with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    model = Tokenizer(models.BPE(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    model.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = chat_template
    return tokenizer


LLAMA_CPP_MISSING = "llama-cpp-python is not installed (`make setup-llama`, or pip install 'togi[llama]'; it compiles llama.cpp)"


# The modules that take longest (mostly starting servers and training processes), in that order. `make test`
# runs the files on two workers (pytest-xdist, --dist loadfile); starting with these keeps one long file
# from running alone at the end while the other worker idles.
LONGEST_MODULES = ("test_serve.py", "test_tune.py", "test_multi_adapter.py", "test_distributed.py", "test_export_embedded.py", "test_train.py", "test_batching.py", "test_serve_validation.py",
                   "test_serve_ray.py", "test_storage.py",
                   "test_prefs.py", "test_augment.py", "test_classification.py", "test_export.py", "test_embedded_model.py")


def pytest_collection_modifyitems(config, items):
    """The longest modules first (see LONGEST_MODULES); tests marked llama_cpp are skipped, with the reason, where
    llama.cpp's bindings are not installed."""
    import importlib.util

    def weight(item) -> int:
        name = item.path.name
        return LONGEST_MODULES.index(name) if name in LONGEST_MODULES else len(LONGEST_MODULES)

    items.sort(key=weight)  # stable: the tests of a module keep their order
    if importlib.util.find_spec("llama_cpp") is not None:
        return
    for item in items:
        if item.get_closest_marker("llama_cpp"):
            item.add_marker(pytest.mark.skip(reason=LLAMA_CPP_MISSING))


@pytest.fixture
def without_llama_cpp(monkeypatch):
    """llama.cpp's bindings as absent, as on a machine without the [llama] extra, whether or not they are installed here."""
    from togi.export import llama_cpp

    monkeypatch.setattr(llama_cpp, "available", lambda: False)


@pytest.fixture(scope="session")
def postgres_server_url():
    """One PostgreSQL server per test process (``postgres_server.py``), skipped with the reason where it cannot start."""
    from postgres_server import postgres_server, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def postgres_url(postgres_server_url):
    """A database of its own for each test module, on the session's server."""
    import secrets

    import psycopg

    name = f"togi_{secrets.token_hex(4)}"
    with psycopg.connect(postgres_server_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return postgres_server_url.replace("/postgres?", f"/{name}?", 1)


@pytest.fixture(scope="module")
def store_backend() -> str:
    """The store a test server of test_serve's runs on: SQLite, except in test_serve.py itself, which runs on both."""
    return "sqlite"


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, tokenizer) -> Path:
    """The tiny tokenizer saved as a model directory, for ``--model DIR`` on the command line."""
    directory = tmp_path_factory.mktemp("tiny-model")
    tokenizer.save_pretrained(directory)
    return directory


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def chat(user: str, answer: str, system: str | None = None) -> dict[str, Any]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def distinct_chats(count: int) -> list[dict[str, Any]]:
    """``count`` clearly different, valid chat examples."""
    return [chat(f"質問その{i}: 商品番号{i * 7919 % 10007}の在庫と配送予定日を教えてください。",
                 f"商品番号{i * 7919 % 10007}は在庫が{i}点あり、{i % 9 + 1}日後に届きます。") for i in range(count)]


def codes_and_lines(findings) -> set[tuple[str, int | None]]:
    return {(finding.code, finding.line) for finding in findings}


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(app, [str(arg) for arg in args], catch_exceptions=False)

    return invoke


def build_tiny_model(tokenizer, seed: int = 0):
    """A 2-layer Llama with random weights over the tiny tokenizer's vocabulary."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
                         initializer_range=0.2)  # large enough that the output depends on the context
    return LlamaForCausalLM(config)


def tiny_lora_model(tokenizer):
    """The tiny Llama with LoRA (r=4, no dropout) on every linear layer, its B matrices non-zero so the adapters matter."""
    import peft
    import torch

    torch.manual_seed(0)
    model = peft.get_peft_model(build_tiny_model(tokenizer), peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                                            lora_dropout=0.0, task_type="CAUSAL_LM"))
    for name, parameter in model.named_parameters():  # B starts at zero
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.1)
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama saved with its tokenizer: a local model directory for `model:`."""
    directory = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


ALWAYS_A = '{"winner": "A", "reason": "A is better", "score_a": 5, "score_b": 2}'


def train_constant_chat_model(directory: Path, tokenizer, records: list[dict[str, Any]], *, max_steps: int = 60,
                              max_positions: int = 1024) -> Path:
    """A tiny model fully fine-tuned on ``records`` (chat rows) until it answers as they do: a real model with a known habit."""
    from togi.config import load_config
    from togi.train import train

    model = build_tiny_model(tokenizer)
    model.config.max_position_embeddings = max_positions
    base = directory / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = write_jsonl(directory / "data.jsonl", records)
    config = load_config(None, [f"model={base}", "method=full", f"data.train_file={data}", f"output_dir={directory / 'run'}",
                                f"training.max_steps={max_steps}", "training.batch_size=4", "training.gradient_accumulation=1",
                                "training.learning_rate=3e-3", "data.val_ratio=0", "monitoring.samples=0"])
    return train(config, log=lambda message: None).output_dir


def noise_texts(seed: int = 0):
    """An endless supply of texts of all sorts and lengths, as untrained models answer."""
    import random

    rng = random.Random(seed)
    alphabet = "あいうえおかきくけこ在庫配送番号商品質問答え回abc123{}:\"。、"
    while True:
        yield "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


@pytest.fixture(scope="session")
def biased_judge_dir(tmp_path_factory, tokenizer):
    """A tiny model trained (full fine-tuning) to always answer ALWAYS_A: a real, maximally position-biased judge."""
    from togi.evaluate.judge import JUDGE_SYSTEM, JUDGE_TEMPLATE

    noise = noise_texts()
    records = [{"messages": [{"role": "system", "content": JUDGE_SYSTEM},
                             {"role": "user", "content": JUDGE_TEMPLATE.format(
                                 question=chat["messages"][0]["content"], reference=chat["messages"][1]["content"],
                                 answer_a=next(noise), answer_b=next(noise))},
                             {"role": "assistant", "content": ALWAYS_A}]} for chat in distinct_chats(32)]
    return train_constant_chat_model(tmp_path_factory.mktemp("judge"), tokenizer, records)


@contextlib.contextmanager
def judge_server(model_dir: Path, log: Path | None = None):
    """tests/tiny_chat_server.py serving ``model_dir`` in a child process; yields its /v1 base URL. With ``log``,
    the server appends each request's messages and its reply to that JSONL file."""
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "tiny_chat_server.py"), str(model_dir), *([str(log)] if log else [])],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
    finally:
        server.terminate()
        server.wait()


GO_TEMPLATE_MODULE = REPO / ".venv" / "node" / "node_modules" / "@evertdespiegeleer" / "go-template" / "dist" / "main.js"
GO_TEMPLATE_MISSING = ("Go's text/template engine is not installed (`make setup-dev` installs the npm package "
                       "@evertdespiegeleer/go-template into .venv/node; it needs node)")


def go_template_available() -> bool:
    import shutil

    return GO_TEMPLATE_MODULE.is_file() and shutil.which("node") is not None


def render_go_template(template: str, data: list[dict[str, Any]]) -> list[str]:
    """Render ``template`` once per object in ``data`` with Go's own text/template, as Ollama does."""
    request = json.dumps({"module": str(GO_TEMPLATE_MODULE), "template": template, "data": data})
    result = subprocess.run(["node", str(REPO / "tests" / "go_template.mjs")], input=request, capture_output=True,
                            text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def ollama_messages(conversation: list[dict[str, str]]) -> dict[str, Any]:
    """A conversation as Ollama hands it to a TEMPLATE: ``.Messages`` with ``Role`` and ``Content``."""
    return {"Messages": [{"Role": message["role"], "Content": message["content"]} for message in conversation]}


# Object storage: moto's S3 server (test_storage.py, test_serve_ray.py)
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory):
    """moto's S3 server on a free port, and the environment that points botocore at it (restored afterwards)."""
    pytest.importorskip("moto.server", reason="moto is not installed (pip install 'moto[s3,server]')")
    pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'togi[cluster]')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "ab")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(endpoint, timeout=2)
            break
        time.sleep(0.2)
    else:
        server.kill()
        pytest.skip("moto's S3 server did not start")
    saved = {name: os.environ.get(name) for name in (*CREDENTIALS, "AWS_ENDPOINT_URL")}
    os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
    yield endpoint
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    server.terminate()
    server.wait()


@pytest.fixture
def bucket(s3_endpoint, request):
    """A new bucket for each test: its s3:// URL with a prefix."""
    import s3fs

    name = "togi-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    s3fs.S3FileSystem().mkdir(name)
    return f"s3://{name}/prefix"
