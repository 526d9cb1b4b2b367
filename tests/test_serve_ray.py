"""`togi serve --executor ray`: each job is a task on a real Ray cluster (two worker nodes started on this machine by
``ray.cluster_utils.Cluster``). A node killed mid-job loses the job's process; Ray runs the task again on the other node
and the job resumes there from its last checkpoint, reporting each step once. Cancelling a job ends its process on its
node. The server keeps its files and checkpoints in an S3 bucket (moto's server, conftest's ``s3_endpoint``), and the
resumed job starts from the bucket's copy of its run. Where Ray is not installed or its cluster cannot start, these tests
are skipped with the reason."""

from __future__ import annotations

import subprocess
import time

import pytest

from conftest import distinct_chats, write_jsonl
from test_serve import Server, TERMINAL, togi, upload, wait_for

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'togi[cluster]')")
    from ray.cluster_utils import Cluster

    try:
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
    except Exception as error:  # no shared memory, no free ports: say why and skip
        pytest.skip(f"a local Ray cluster cannot start here: {error}")
    yield cluster
    cluster.shutdown()


def job_processes(job_id: str) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"togi.serve.jobs .* {job_id}"], capture_output=True, text=True)
    return found.stdout.split()


def messages_of(client, job_id: str) -> list[str]:
    return [event.message for event in client.fine_tuning.jobs.list_events(job_id, limit=100)]


def wait_for_message(client, job_id: str, start: str, timeout: float = 180) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [message for message in messages_of(client, job_id) if message.startswith(start)]
        if found:
            return found[0]
        assert client.fine_tuning.jobs.retrieve(job_id).status not in TERMINAL, messages_of(client, job_id)
        time.sleep(0.2)
    raise TimeoutError(f"no event {start!r}: {messages_of(client, job_id)}")


@pytest.fixture(scope="module")
def ray_bucket(s3_endpoint):
    """The bucket the Ray tests' server keeps files and checkpoints in: a job resumed on another node starts from it."""
    import s3fs

    s3fs.S3FileSystem().mkdir("togi-ray")
    return "s3://togi-ray/data"


@pytest.fixture(scope="module")
def ray_server(ray_cluster, ray_bucket, tmp_path_factory, tiny_model_dir):
    data_dir = tmp_path_factory.mktemp("serve-ray") / "data"
    server = Server(data_dir, tiny_model_dir, "--executor", "ray", "--ray-address", ray_cluster.address, "--workers", "2",
                    "--storage", ray_bucket).start()
    key = togi("serve", "keys", "create", "--org", "acme", "--data-dir", data_dir).stdout.strip()
    yield server, server.client(key)
    server.stop()


def test_a_job_whose_node_dies_finishes_on_the_other_node_from_its_checkpoint(ray_cluster, ray_server, ray_bucket, tmp_path):
    server, client = ray_server
    training = upload(client, write_jsonl(tmp_path / "shop.jsonl", distinct_chats(20)))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 8, "batch_size": 1}}})  # 160 steps, a checkpoint every 20

    started = wait_for_message(client, job.id, "Fine-tuning job started on Ray node ")
    first_node = started.removeprefix("Fine-tuning job started on Ray node ")
    wait_for_message(client, job.id, "Checkpoint created at step 20")
    import s3fs

    assert s3fs.S3FileSystem().find(f"{ray_bucket.removeprefix('s3://')}/jobs/{job.id}/run/checkpoints/checkpoint-20")  # published
    victim = next(node for node in ray_cluster.worker_nodes if node.node_id.startswith(first_node))
    ray_cluster.remove_node(victim, allow_graceful=False)  # the node dies, and the job process with it

    finished = wait_for(client, job.id, timeout=400)
    messages = messages_of(client, job.id)
    assert finished.status == "succeeded", (finished.error, messages)
    resumed = [message for message in messages if message.startswith("Fine-tuning job resumed on Ray node ")]
    assert len(resumed) == 1 and first_node not in resumed[0], messages
    assert int(resumed[0].rsplit(" ", 1)[1]) >= 20  # from a checkpoint, not from the start
    steps = [event.data["step"] for event in client.fine_tuning.jobs.list_events(job.id, limit=100) if event.type == "metrics"]
    assert sorted(steps) == list(range(1, 161))  # each step reported once, across both nodes
    answer = client.chat.completions.create(model=finished.fine_tuned_model, messages=[{"role": "user", "content": "在庫は？"}], max_tokens=4)
    assert answer.choices[0].message.content is not None
    ray_cluster.add_node(num_cpus=1)  # the next test has two nodes again


def test_cancelling_a_job_ends_its_process_on_its_node(ray_server, tmp_path):
    server, client = ray_server
    training = upload(client, write_jsonl(tmp_path / "shop.jsonl", distinct_chats(20)))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 10, "batch_size": 1}}})
    wait_for_message(client, job.id, "Fine-tuning job started on Ray node ")
    assert job_processes(job.id)
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    deadline = time.time() + 30
    while job_processes(job.id) and time.time() < deadline:
        time.sleep(0.2)
    assert not job_processes(job.id)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"


def test_a_job_no_node_can_hold_fails_with_the_reason_instead_of_waiting_for_ever(ray_server, tmp_path):
    server, client = ray_server
    training = upload(client, write_jsonl(tmp_path / "shop.jsonl", distinct_chats(12)))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, extra_body={"processes": 2})  # nodes have 1 CPU
    finished = wait_for(client, job.id, timeout=120)
    assert finished.status == "failed", messages_of(client, job.id)
    assert "need 2 CPUs on one node, and the largest node of the Ray cluster has 1" in finished.error.message
    assert "ask for fewer processes" in finished.error.message


def test_a_ray_address_without_a_cluster_is_named_without_a_traceback(tmp_path):
    pytest.importorskip("ray")
    result = togi("serve", "--data-dir", tmp_path, "--executor", "ray", "--ray-address", "127.0.0.1:1", check=False)
    assert result.returncode == 2 and "--ray-address 127.0.0.1:1" in result.stderr and "Traceback" not in result.stderr
    wrong = togi("serve", "--data-dir", tmp_path, "--ray-address", "auto", check=False)
    assert wrong.returncode == 2 and "add --executor ray" in wrong.stderr
