"""Many requests at once: batched answers equal lone ones, a dropped stream stops, a full queue says so,
and no client can hang the server."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request

import openai
import pytest

from togi.config import load_config
from togi.serve.inference import CompletionRequest, ModelPool, ServerBusy
from togi.train import train

from conftest import distinct_chats, write_jsonl
from test_serve import Server, client, key, server, togi  # noqa: F401 (fixtures: a server for this module)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

QUESTIONS = ["在庫はありますか？", "配送にかかる日数は？", "返品できますか？"]


def adapter_run(directory, model_dir, method, chats):
    data = write_jsonl(directory / "train.jsonl", chats)
    config = load_config(None, [f"model={model_dir}", f"method={method}", f"data.train_file={data}", f"output_dir={directory / 'run'}",
                                "training.max_steps=6", "training.batch_size=4", "training.gradient_accumulation=1",
                                "training.learning_rate=1e-2", "monitoring.samples=0", "data.val_ratio=0"])
    return str(train(config, log=lambda message: None).run_dir / "adapter")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir):
    """Two LoRA adapters trained on different chats (PEFT mixes them in one batch) and a DoRA one (it cannot)."""
    chats = distinct_chats(48)
    return {"ft:lora-a": adapter_run(tmp_path_factory.mktemp("a"), tiny_model_dir, "lora", chats[:16]),
            "ft:lora-b": adapter_run(tmp_path_factory.mktemp("b"), tiny_model_dir, "lora", chats[16:32]),
            "ft:dora": adapter_run(tmp_path_factory.mktemp("d"), tiny_model_dir, "dora", chats[32:])}


def request(question, max_tokens=12):
    return CompletionRequest(messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0)


def wait_until(condition, seconds=10.0):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def test_interleaved_streamed_and_dropped_requests_get_the_answers_they_get_alone(tiny_model_dir, adapters):
    pool = ModelPool({"tiny": str(tiny_model_dir)}, max_batch=8)
    models = [None, *((name, path) for name, path in adapters.items())]
    cases = [(model, question) for model in models for question in QUESTIONS]
    alone = {i: [item for item in pool.stream("tiny", model, request(question))][-1].text for i, (model, question) in enumerate(cases)}
    assert len({alone[i] for i in alone}) > len(QUESTIONS)  # the models answer differently

    together: dict[int, str] = {}

    def ask(i, model, question):
        answer = pool.stream("tiny", model, request(question))
        if i % 3 == 0:  # every third client reads one piece and goes away
            next(answer)
            answer.close()
            return
        together[i] = [item for item in answer][-1].text

    for round_ in range(2):  # twice: the second round runs beside what the dropped ones may have left
        threads = [threading.Thread(target=ask, args=(i, *case)) for i, case in enumerate(cases)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert {i: together[i] for i in together} == {i: alone[i] for i in together}, f"round {round_}"
        assert len(together) == len(cases) - len(range(0, len(cases), 3))
        together.clear()
    engine = pool.engine("tiny")
    wait_until(lambda: not engine.batches and engine.waiting.empty())


def test_a_cancelled_answer_stops_within_a_step_and_the_base_is_unchanged(tiny_model_dir, adapters):
    pool = ModelPool({"tiny": str(tiny_model_dir)})
    base_answer = [item for item in pool.stream("tiny", None, request(QUESTIONS[0]))][-1].text
    tokens: list[int | None] = []
    sequence, _ = pool.start("tiny", ("ft:lora-a", adapters["ft:lora-a"]), request(QUESTIONS[0], max_tokens=2000),
                             lambda token, reason: tokens.append(token))
    wait_until(lambda: len(tokens) >= 3)
    sequence.cancel()
    engine = pool.engine("tiny")
    wait_until(lambda: not engine.batches)
    stopped_at = len(tokens)
    time.sleep(0.3)
    assert len(tokens) == stopped_at < 2000  # nothing more after the cancel
    assert [item for item in pool.stream("tiny", None, request(QUESTIONS[0]))][-1].text == base_answer


def test_a_full_queue_refuses_instead_of_piling_up(tiny_model_dir):
    pool = ModelPool({"tiny": str(tiny_model_dir)}, max_batch=1, max_waiting=1)
    running, _ = pool.start("tiny", None, request(QUESTIONS[0], max_tokens=2000), lambda token, reason: None)
    engine = pool.engine("tiny")
    wait_until(lambda: bool(engine.batches))  # the first is decoding, so the next one waits
    waiting, _ = pool.start("tiny", None, request(QUESTIONS[1], max_tokens=4), lambda token, reason: None)
    with pytest.raises(ServerBusy, match="1 requests are already waiting"):
        pool.start("tiny", None, request(QUESTIONS[2]), lambda token, reason: None)
    running.cancel()
    waiting.cancel()
    wait_until(lambda: not engine.batches and engine.waiting.empty())


def test_streams_dropped_by_client_timeouts_leave_the_server_answering(tmp_path, tiny_model_dir):
    """The hang of issue 14: 42 streams whose clients give up leave every route answering."""
    server = Server(tmp_path / "data", tiny_model_dir).start()
    try:
        key = togi("serve", "keys", "create", "--org", "acme", "--data-dir", tmp_path / "data").stdout.strip()
        client = server.client(key)
        messages = [{"role": "user", "content": QUESTIONS[0]}]
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)  # the model is loaded

        def impatient():
            quick = openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=0.5)
            with contextlib.suppress(openai.APIError):
                for _ in quick.chat.completions.create(model="tiny", messages=messages, max_tokens=400, stream=True):
                    pass

        threads = [threading.Thread(target=impatient) for _ in range(42)]
        for thread in threads:
            thread.start()
        slowest_models_call = 0.0
        while any(thread.is_alive() for thread in threads):
            start = time.perf_counter()
            urllib.request.urlopen(urllib.request.Request(f"{server.url}/models", headers={"Authorization": f"Bearer {key}"}), timeout=5)
            slowest_models_call = max(slowest_models_call, time.perf_counter() - start)
            time.sleep(0.05)
        assert slowest_models_call < 1.0
        start = time.perf_counter()
        answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0, timeout=30)
        assert answer.choices[0].finish_reason in ("stop", "length") and time.perf_counter() - start < 30
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                           client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0, stream=True)
                           if chunk.choices)
        assert streamed == answer.choices[0].message.content
    finally:
        server.stop()


def test_n_seeded_answers_come_as_indexed_choices_streamed_or_not(client):
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    whole = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, n=3, seed=7, temperature=1.0)
    assert [choice.index for choice in whole.choices] == [0, 1, 2]
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, n=3, seed=7, temperature=1.0)
    assert [c.message.content for c in again.choices] == [c.message.content for c in whole.choices]  # each choice has its own seed
    pieces, finished, usage = {0: "", 1: ""}, {}, None
    for chunk in client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, n=2, seed=7, temperature=1.0, stream=True,
                                                stream_options={"include_usage": True}):
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert set(finished) == {0, 1} and usage.completion_tokens <= 6
    assert [pieces[0], pieces[1]] == [c.message.content for c in whole.choices[:2]]
