"""`togi serve` runs the OpenAI fine-tuning flow unchanged: a real server process on loopback, the official
`openai` client, and jobs training a tiny model in child processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import distinct_chats, write_jsonl

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def togi(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "togi.cli.main", *map(str, args)], capture_output=True, text=True, check=check, timeout=120)


class Server:
    def __init__(self, data_dir: Path, model_dir: Path, *extra: str) -> None:
        self.data_dir, self.model_dir, self.extra = data_dir, model_dir, extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None
        self.database: tuple[str, ...] = ()  # --database URL, for the CLI commands a test runs beside the server

    def start(self) -> Server:
        log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "togi.cli.main", "serve", "--port", str(self.port), "--data-dir",
                                         str(self.data_dir), "--model", f"tiny={self.model_dir}", *self.extra],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 90
        while time.time() < deadline:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/openapi.json", timeout=2)
                return self
            assert self.process.poll() is None, (self.data_dir.parent / f"server-{self.port}.log").read_text()
            time.sleep(0.3)
        raise TimeoutError("togi serve did not start")

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, key: str):
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store_backend(request):
    """This module's API suite runs on each store: SQLite (the default) and PostgreSQL (``--database``; skipped where it
    cannot start). Modules that borrow ``server`` get conftest's ``store_backend``: SQLite alone."""
    return request.param


@pytest.fixture(scope="module")
def server(request, store_backend, tmp_path_factory, tiny_model_dir):
    database: tuple[str, ...] = ()
    if store_backend == "postgres":
        database = ("--database", request.getfixturevalue("postgres_url"))  # skipped, with the reason, where PostgreSQL cannot start
    data_dir = tmp_path_factory.mktemp("serve") / "data"
    running = Server(data_dir, tiny_model_dir, "--max-file-mb", "1", *database).start()
    running.database = database
    yield running
    running.stop()


@pytest.fixture(scope="module")
def key(server):
    return togi("serve", "keys", "create", "--org", "acme", "--data-dir", server.data_dir, *server.database).stdout.strip()


@pytest.fixture(scope="module")
def client(server, key):
    return server.client(key)


def upload(client, path: Path):
    with open(path, "rb") as handle:
        return client.files.create(file=handle, purpose="fine-tune")


def wait_for(client, job_id: str, statuses=TERMINAL, timeout: float = 240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {job.status}")


def all_events(client, job_id: str) -> list:
    return list(reversed(list(client.fine_tuning.jobs.list_events(job_id, limit=100))))  # every page (iterating fetches the next), oldest first


def job_process(job_id: str) -> int | None:
    """The pid of the process training ``job_id`` (found in /proc, as an operator would with ps)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                arguments = (entry / "cmdline").read_bytes().split(b"\0")
                if b"togi.serve.jobs" in arguments and job_id.encode() in arguments:
                    return int(entry.name)
    return None


def test_the_openai_fine_tuning_flow_runs_unchanged(client, tmp_path):
    training = upload(client, write_jsonl(tmp_path / "shop.jsonl", distinct_chats(12)))
    assert training.status == "processed" and training.filename == "shop.jsonl" and training.purpose == "fine-tune"
    validation = upload(client, write_jsonl(tmp_path / "shop-val.jsonl", distinct_chats(22)[12:]))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, validation_file=validation.id, suffix="shop",
                                         method={"type": "supervised", "supervised": {"hyperparameters": {
                                             "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 50}}})  # lr 1e-2: a visible change
    assert job.status == "validating_files" and job.training_file == training.id
    seen_statuses = set()
    while job.status not in TERMINAL:
        time.sleep(0.5)
        job = client.fine_tuning.jobs.retrieve(job.id)
        seen_statuses.add(job.status)
        client.fine_tuning.jobs.list_events(job.id, limit=5)  # reading events along the way, as the seeds do
    assert job.status == "succeeded", job.error
    assert "running" in seen_statuses
    assert job.fine_tuned_model.startswith("ft:tiny:acme:shop:") and job.trained_tokens > 0
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 2

    messages = [event.message for event in all_events(client, job.id)]
    for expected in ("Validating training file", "Files validated, moving job to queued state", "Fine-tuning job started",
                     "Step 1/12: training loss=", "Checkpoint created at step 6", "New fine-tuned model created",
                     "The job has successfully completed"):
        assert any(message.startswith(expected) for message in messages), (expected, messages)
    metrics = [event for event in all_events(client, job.id) if event.type == "metrics" and event.data["train_loss"] is not None]
    assert len(metrics) == 12 and metrics[-1].data["step"] == 12 and metrics[-1].data["total_steps"] == 12
    validation_steps = [event.data["step"] for event in all_events(client, job.id) if event.type == "metrics" and event.data["valid_loss"]]
    assert validation_steps == [6, 12]  # evaluated once per epoch on the validation file

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [12, 6]  # newest first
    assert checkpoints[1].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"

    results = client.files.content(job.result_files[0]).text.splitlines()
    assert results[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy" and len(results) == 13
    assert results[6].startswith("6,") and results[6].split(",")[3]  # the validation loss at the end of epoch 1

    question = [{"role": "user", "content": "在庫はありますか？"}]
    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=question, max_tokens=8, temperature=0)
    assert answer.choices[0].message.role == "assistant" and answer.usage.completion_tokens <= 8
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    stream = client.chat.completions.create(model=job.fine_tuned_model, messages=question, max_tokens=8, temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    checkpoint_answer = client.chat.completions.create(model=checkpoints[1].fine_tuned_model_checkpoint, messages=question, max_tokens=8)
    assert checkpoint_answer.choices[0].message is not None
    base_answer = client.chat.completions.create(model="tiny", messages=question, max_tokens=8, temperature=0)
    assert base_answer.choices[0].message.content != answer.choices[0].message.content  # the adapter is switched off for the base
    assert job.fine_tuned_model in [m.id for m in client.models.list().data]


def test_the_tuned_model_answers_as_its_adapter_does_in_peft(client, server, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = next(j for j in client.fine_tuning.jobs.list().data if j.status == "succeeded")
    adapter_dir = server.data_dir / "jobs" / job.id / "run" / "adapter"
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(server.model_dir), adapter_dir)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "返品できますか？"}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=6, do_sample=False)
    expected = tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).rstrip("\ufffd")  # a cut-off character is dropped
    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "返品できますか？"}],
                                            max_tokens=6, temperature=0)
    assert answer.choices[0].message.content == expected


def test_an_invalid_training_file_fails_the_job_naming_the_example_and_message(client, tmp_path):
    records = distinct_chats(12)
    records[3]["messages"][1] = {"role": "assistant"}  # no content
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, write_jsonl(tmp_path / "bad.jsonl", records)).id)
    job = wait_for(client, job.id)
    assert job.status == "failed" and job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 4" in job.error.message and "example 3" in job.error.message and "message 1" in job.error.message

    few = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, write_jsonl(tmp_path / "few.jsonl", distinct_chats(4))).id)
    few = wait_for(client, few.id)
    assert few.status == "failed" and few.error.code == "invalid_n_examples"


def test_request_errors_use_the_openai_envelope(client, server, tmp_path):
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model="no-such-model", training_file="file-x")
    assert error.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model="tiny", training_file="file-doesnotexist")
    assert error.value.param == "training_file"
    request = urllib.request.Request(f"{server.url}/fine_tuning/jobs", data=b'{"training_file": 3}', method="POST",
                                     headers={"Authorization": f"Bearer {client.api_key}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request)
    assert failure.value.code == 400 and set(json.loads(failure.value.read())["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.AuthenticationError):
        server.client("sk-togi-wrong").models.list()
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(f"{server.url}/models")
    assert failure.value.code == 401 and "API key" in json.loads(failure.value.read())["error"]["message"]
    large = tmp_path / "large.jsonl"
    large.write_bytes(b"x" * (1024 * 1024 + 10))
    with pytest.raises(openai.APIStatusError) as error:
        upload(client, large)
    assert error.value.status_code == 413
    chats = upload(client, write_jsonl(tmp_path / "d.jsonl", distinct_chats(12))).id
    unknown = client.fine_tuning.jobs.create(model="tiny", training_file=chats, method={"type": "reinforcement"})
    assert unknown.status == "failed" and unknown.error.code == "unsupported_method"
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model="tiny", training_file=chats, method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}})
    assert error.value.param == "method.dpo.hyperparameters.beta"
    dpo_on_chats = wait_for(client, client.fine_tuning.jobs.create(model="tiny", training_file=chats, method={"type": "dpo"}).id)
    assert dpo_on_chats.status == "failed" and "a dpo job needs preference pairs" in dpo_on_chats.error.message


def test_a_hostile_filename_stays_inside_the_data_dir(client, server, tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", distinct_chats(10))
    with open(path, "rb") as handle:
        record = client.files.create(file=("../../../etc/evil.jsonl", handle), purpose="fine-tune")
    assert record.filename == "evil.jsonl"
    assert (server.data_dir / "files" / f"{record.id}.jsonl").read_bytes() == path.read_bytes()  # stored under its id
    assert not list(server.data_dir.parent.parent.rglob("evil.jsonl"))
    assert client.files.content(record.id).content == path.read_bytes()


def test_another_organization_gets_404_for_everything(client, server, tmp_path):
    other = server.client(togi("serve", "keys", "create", "--org", "rival", "--data-dir", server.data_dir, *server.database).stdout.strip())
    job = next(j for j in client.fine_tuning.jobs.list().data if j.status == "succeeded")
    for call in (lambda: other.files.retrieve(job.training_file), lambda: other.files.content(job.training_file),
                 lambda: other.fine_tuning.jobs.retrieve(job.id), lambda: other.fine_tuning.jobs.list_events(job.id),
                 lambda: other.models.retrieve(job.fine_tuned_model), lambda: other.fine_tuning.jobs.cancel(job.id),
                 lambda: other.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])):
        with pytest.raises(openai.NotFoundError):
            call()
    assert other.fine_tuning.jobs.list().data == [] and other.files.list().data == []
    assert [m.id for m in other.models.list().data] == ["smollm2-135m-instruct", "tiny"]


def test_cancel_stops_the_training_process(client, tmp_path):
    data = upload(client, write_jsonl(tmp_path / "long.jsonl", distinct_chats(40)))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=data.id,
                                         method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 1}}})
    wait_for(client, job.id, statuses=("running",) + TERMINAL)
    deadline = time.time() + 60
    while job_process(job.id) is None and time.time() < deadline:
        time.sleep(0.2)
    pid = job_process(job.id)
    assert pid is not None
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    deadline = time.time() + 15
    while job_process(job.id) is not None and time.time() < deadline:
        time.sleep(0.2)
    assert job_process(job.id) is None
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert all_events(client, job.id)[-1].message == "The job was cancelled"


def test_kill_9_and_restart_resumes_the_job_from_its_checkpoint(tmp_path, tiny_model_dir):
    first = Server(tmp_path / "data", tiny_model_dir).start()
    key = togi("serve", "keys", "create", "--org", "acme", "--data-dir", tmp_path / "data").stdout.strip()
    client = first.client(key)
    data = upload(client, write_jsonl(tmp_path / "train.jsonl", distinct_chats(12)))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=data.id,
                                         method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 30, "batch_size": 4}}})
    deadline = time.time() + 120
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.time() < deadline and client.fine_tuning.jobs.retrieve(job.id).status not in TERMINAL
        time.sleep(0.2)
    before = [event.id for event in all_events(client, job.id)]
    first.kill()  # the server and, as in a machine crash, its job process
    pid = job_process(job.id)
    if pid:
        os.killpg(pid, signal.SIGKILL)
    try:
        second = Server(tmp_path / "data", tiny_model_dir).start()
        client = second.client(key)
        job = wait_for(client, job.id)
        assert job.status == "succeeded", job.error
        events = all_events(client, job.id)
        assert [event.id for event in events][: len(before)] == before  # nothing written before the crash is lost
        messages = [event.message for event in events]
        assert any(m.startswith("The server restarted; the job is queued again") for m in messages)
        assert any(m.startswith("Fine-tuning job resumed from the checkpoint at step") for m in messages)
        steps = [event.data["step"] for event in events if event.type == "metrics" and event.data["train_loss"] is not None]
        assert steps == sorted(set(steps)) and steps[-1] == 90  # every step reported once, through to the end
    finally:
        second.stop()


def test_togi_jobs_drives_the_api_from_the_command_line(server, key, client, tmp_path):
    endpoint = ["--base-url", server.url, "--api-key", key]
    data = write_jsonl(tmp_path / "cli.jsonl", distinct_chats(12))
    created = json.loads(togi("jobs", "create", "--training-file", data, "--model", "tiny", "--n-epochs", "1", "--batch-size", "4",
                              "--suffix", "cli", *endpoint).stdout)
    assert created["status"] == "validating_files" and created["training_file"].startswith("file-")  # the local file was uploaded
    job = wait_for(client, created["id"])
    assert job.status == "succeeded" and job.fine_tuned_model.startswith("ft:tiny:acme:cli:")
    assert created["id"] in togi("jobs", "list", *endpoint).stdout
    assert json.loads(togi("jobs", "get", created["id"], *endpoint).stdout)["status"] == "succeeded"
    assert "The job has successfully completed" in togi("jobs", "events", created["id"], *endpoint).stdout
    refused = togi("jobs", "cancel", created["id"], *endpoint, check=False)
    assert refused.returncode == 1 and "already succeeded" in refused.stderr and "Traceback" not in refused.stderr
    missing = togi("jobs", "get", "ftjob-nope", "--base-url", server.url, "--api-key", "sk-togi-wrong", check=False)
    assert missing.returncode == 1 and "401" in missing.stderr


def test_pause_and_resume_continue_from_the_checkpoint(client, tmp_path):
    data = upload(client, write_jsonl(tmp_path / "pause.jsonl", distinct_chats(12)))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=data.id,
                                         method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 20, "batch_size": 4}}})
    deadline = time.time() + 120
    while not client.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.time() < deadline
        time.sleep(0.2)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    assert job_process(job.id) is None
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    job = wait_for(client, job.id)
    assert job.status == "succeeded"
    assert any(e.message.startswith("Fine-tuning job resumed from the checkpoint at step") for e in all_events(client, job.id))


def test_models_can_be_listed_read_and_deleted_by_their_owner(client, server):
    openapi = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{server.port}/openapi.json").read())
    assert "/v1/fine_tuning/jobs" in openapi["paths"] and "/v1/chat/completions" in openapi["paths"]
    job = next(j for j in client.fine_tuning.jobs.list().data if j.status == "succeeded")
    assert client.models.retrieve(job.fine_tuned_model).owned_by == "acme"
    assert client.models.retrieve("tiny").owned_by == "togi"
    with pytest.raises(openai.PermissionDeniedError):
        client.models.delete("tiny")
    assert client.models.delete(job.fine_tuned_model).deleted
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])


def test_a_dpo_job_trains_on_openai_preference_data(client, tmp_path):
    pairs = [{"input": {"messages": [{"role": "user", "content": f"質問{i}: 在庫はありますか？"}]},
              "preferred_output": [{"role": "assistant", "content": "はい、在庫がございます。"}],
              "non_preferred_output": [{"role": "assistant", "content": "The quick brown fox"}]} for i in range(12)]
    data = upload(client, write_jsonl(tmp_path / "dpo.jsonl", pairs))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=data.id, suffix="polite",
                                         method={"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})
    job = wait_for(client, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1  # "auto" resolved
    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "在庫は？"}], max_tokens=4)
    assert answer.choices[0].finish_reason in ("stop", "length")
