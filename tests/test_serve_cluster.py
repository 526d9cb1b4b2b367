"""Two `togi serve` replicas on one PostgreSQL database and one data directory, as behind a load balancer: the
official openai client drives both at once, and every job runs exactly once, with each event once, whichever replica
took it. PostgreSQL runs for real (``postgres_server.py``); where it cannot start, these tests are skipped."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import distinct_chats, write_jsonl
from test_serve import Server, TERMINAL, togi, upload

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_two_replicas_on_one_database_run_each_job_once(tmp_path, tiny_model_dir, postgres_url):
    data_dir = tmp_path / "data"
    replicas = [Server(data_dir, tiny_model_dir, "--database", postgres_url, "--workers", "1").start() for _ in range(2)]
    try:
        key = togi("serve", "keys", "create", "--org", "acme", "--data-dir", data_dir, "--database", postgres_url).stdout.strip()
        clients = [replica.client(key) for replica in replicas]
        training = upload(clients[0], write_jsonl(tmp_path / "shop.jsonl", distinct_chats(12)))
        assert clients[1].files.retrieve(training.id).filename == "shop.jsonl"  # one store: the other replica knows the file

        def create(number: int):
            return clients[number % 2].fine_tuning.jobs.create(
                model="tiny", training_file=training.id, suffix=f"job{number}",
                method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}})

        with ThreadPoolExecutor(4) as pool:
            jobs = list(pool.map(create, range(4)))
        deadline = time.time() + 400
        while time.time() < deadline:
            states = [clients[i % 2].fine_tuning.jobs.retrieve(job.id) for i, job in enumerate(jobs)]
            if all(state.status in TERMINAL for state in states):
                break
            time.sleep(1)
        assert [state.status for state in states] == ["succeeded"] * 4, [state.error for state in states]
        assert len(clients[1].fine_tuning.jobs.list(limit=100).data) == 4  # no job twice

        for job in jobs:
            events = list(clients[0].fine_tuning.jobs.list_events(job.id, limit=100))
            messages = [event.message for event in events]
            for once in ("Validating training file", "Files validated, moving job to queued state", "Fine-tuning job started",
                         "The job has successfully completed"):
                assert sum(message.startswith(once) for message in messages) == 1, (once, messages)
            steps = [event.data["step"] for event in events if event.type == "metrics"]
            assert sorted(steps) == list(range(1, 4))  # 12 examples, batch 4, one epoch: each step's event once
        answer = clients[1].chat.completions.create(model=states[0].fine_tuned_model, messages=[{"role": "user", "content": "在庫は？"}],
                                                    max_tokens=4)
        assert answer.choices[0].message.content is not None
    finally:
        for replica in replicas:
            replica.stop()


def test_a_database_that_cannot_be_reached_is_named_without_a_traceback(tmp_path):
    result = togi("serve", "keys", "create", "--org", "acme", "--data-dir", tmp_path,
                  "--database", f"postgresql://togi@/postgres?host={tmp_path}", check=False)
    assert result.returncode == 2 and "cannot use the PostgreSQL database" in result.stderr and "Traceback" not in result.stderr
    bad = togi("serve", "keys", "create", "--org", "acme", "--data-dir", tmp_path, "--database", "mysql://x", check=False)
    assert bad.returncode == 2 and "neither postgresql://" in bad.stderr


def test_the_compose_example_uses_flags_togi_serve_has():
    """examples/cluster/compose.yaml cannot run here (no Docker); its commands are held to the CLI they call."""
    import re
    from pathlib import Path

    import yaml

    compose = yaml.safe_load((Path(__file__).parents[1] / "examples" / "cluster" / "compose.yaml").read_text(encoding="utf-8"))
    command = compose["services"]["api"]["command"]
    assert command.startswith("togi serve ")
    help_text = togi("serve", "--help").stdout
    flags = re.findall(r"(--[a-z-]+)", command)
    assert {"--database", "--executor", "--ray-address", "--storage"} <= set(flags)
    assert [flag for flag in flags if flag not in help_text] == []
    assert "ray-head:6379" in command and compose["services"]["ray-head"]["command"].startswith("ray start --head --port=6379")


def test_a_job_process_that_another_took_over_stops_at_once_and_reports_nothing_more(tmp_path, tiny_model_dir):
    """A Ray task retried on another node takes the job over (a new token in its attempt record); a process of the old
    attempt still alive (a node cut off, not dead) must stop rather than train on beside it. Simulated here by writing
    the new token into the database under a running job."""
    from togi.serve.store import SQLiteStore

    data_dir = tmp_path / "data"
    server = Server(data_dir, tiny_model_dir).start()
    try:
        key = togi("serve", "keys", "create", "--org", "acme", "--data-dir", data_dir).stdout.strip()
        client = server.client(key)
        training = upload(client, write_jsonl(tmp_path / "shop.jsonl", distinct_chats(20)))
        job = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 10, "batch_size": 1}}})  # 200 steps
        deadline = time.time() + 180
        while not any(event.type == "metrics" for event in client.fine_tuning.jobs.list_events(job.id, limit=100)):
            assert time.time() < deadline and client.fine_tuning.jobs.retrieve(job.id).status not in TERMINAL
            time.sleep(0.2)
        SQLiteStore(data_dir / "togi.db").update("job_attempt", f"attempt-{job.id}", token="attempt-on-another-node")

        finished = client.fine_tuning.jobs.retrieve(job.id)
        while finished.status not in TERMINAL:
            time.sleep(0.2)
            finished = client.fine_tuning.jobs.retrieve(job.id)
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        assert finished.status == "failed" and "exit code 75" in finished.error.message  # the local executor saw it stop
        assert max(event.data["step"] for event in events if event.type == "metrics") < 200
        assert not any(event.message.startswith("New fine-tuned model created") for event in events)
    finally:
        server.stop()
