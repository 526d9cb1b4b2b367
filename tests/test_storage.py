"""`togi serve --storage s3://bucket/prefix`: files, checkpoints and models in an S3 bucket, each machine's data directory
its cache. The bucket is moto's S3 server (conftest's ``s3_endpoint``), run as a process of its own on loopback: a real HTTP S3
endpoint, which s3fs and botocore talk to as to AWS or MinIO. Where moto or s3fs is not installed, these tests are
skipped with the reason."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from conftest import distinct_chats, write_jsonl
from test_serve import Server, togi, upload, wait_for

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

def storage_of(data_dir: Path, url: str):
    from togi.serve.storage import Storage

    return Storage(data_dir, url)


def test_what_one_machine_publishes_another_machine_materializes(tmp_path, bucket):
    here, there = storage_of(tmp_path / "here", bucket), storage_of(tmp_path / "there", bucket)
    run = tmp_path / "here" / "jobs" / "ftjob-1" / "run"
    (run / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "metrics.jsonl").write_text('{"step": 2}\n')
    here.publish(run)

    fetched = there.materialize(tmp_path / "there" / "jobs" / "ftjob-1" / "run")
    assert (fetched / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (fetched / "metrics.jsonl").read_text() == '{"step": 2}\n'
    assert not list(fetched.rglob(".*.part"))  # each file arrived whole, under its name

    (run / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").unlink()
    (run / "checkpoints" / "checkpoint-2").rmdir()
    here.remove_missing(run, "checkpoints")  # the trainer rotated it out: the bucket lets it go too
    assert not here.fs.exists(here.key(run / "checkpoints" / "checkpoint-2"))

    here.delete(run / "metrics.jsonl")
    with pytest.raises(FileNotFoundError):
        b"".join(there.chunks(tmp_path / "there" / "jobs" / "ftjob-1" / "run" / "elsewhere.jsonl"))
    assert not here.fs.exists(here.key(run / "metrics.jsonl")) and not (run / "metrics.jsonl").exists()


def test_an_upload_reaches_the_bucket_in_chunks_never_whole_in_memory(tmp_path, bucket):
    from togi.serve.files import file_path, store_stream
    from togi.serve.store import SQLiteStore

    size = 64 << 20

    class Upload:  # what FastAPI hands over: a file object read in chunks
        sent = 0

        def read(self, n: int) -> bytes:
            n = min(n, size - self.sent)
            self.sent += n
            return b'{"messages": []}\n'[:1] * n

    storage = storage_of(tmp_path / "data", bucket)
    store = SQLiteStore(tmp_path / "data" / "togi.db")
    tracemalloc.start()
    record = store_stream(store, tmp_path / "data", "acme", "big.jsonl", "fine-tune", Upload(), max_bytes=size + 1, storage=storage)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert record["bytes"] == size and storage.fs.size(storage.key(file_path(tmp_path / "data", record))) == size
    assert peak < size / 3, f"the upload held {peak / 2**20:.0f} MiB in memory at once"


def test_two_servers_with_their_own_disks_share_files_and_models_through_the_bucket(tmp_path, bucket, tiny_model_dir, postgres_url):
    """A job trains on one replica; a second replica, started later on another disk, serves the file and the model."""
    first_dir, second_dir = tmp_path / "first" / "data", tmp_path / "second" / "data"
    first_dir.parent.mkdir()
    second_dir.parent.mkdir()
    shared = ("--database", postgres_url, "--storage", bucket)
    first = Server(first_dir, tiny_model_dir, *shared).start()
    try:
        key = togi("serve", "keys", "create", "--org", "acme", "--data-dir", first_dir, "--database", postgres_url).stdout.strip()
        client = first.client(key)
        path = write_jsonl(tmp_path / "shop.jsonl", distinct_chats(12))
        training = upload(client, path)
        job = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, method={
            "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}})
        finished = wait_for(client, job.id)
        assert finished.status == "succeeded", finished.error
    finally:
        first.stop()

    storage = storage_of(first_dir, bucket)
    stored = storage.fs.find(bucket.removeprefix("s3://"))
    assert any(name.endswith(f"files/{training.id}.jsonl") for name in stored)
    assert any(name.endswith(f"jobs/{job.id}/run/adapter/adapter_model.safetensors") for name in stored)
    assert any(name.endswith(f"jobs/{job.id}/checkpoints/step-3/adapter_model.safetensors") for name in stored)

    second = Server(second_dir, tiny_model_dir, *shared).start()
    try:
        client = second.client(key)
        assert client.files.content(training.id).read() == path.read_bytes()
        checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
        for model in (finished.fine_tuned_model, checkpoint):
            answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "在庫は？"}], max_tokens=4)
            assert answer.choices[0].message.content is not None
        assert (second_dir / "jobs" / job.id / "run" / "adapter" / "adapter_model.safetensors").is_file()  # fetched from the bucket
        assert client.files.delete(training.id).deleted
        storage.fs.invalidate_cache()
        assert not any(name.endswith(f"files/{training.id}.jsonl") for name in storage.fs.find(bucket.removeprefix("s3://")))
    finally:
        second.stop()


def test_a_bucket_that_cannot_be_used_is_named_without_a_traceback(tmp_path, s3_endpoint):
    missing = togi("serve", "--data-dir", tmp_path, "--storage", "s3://no-such-bucket/x", check=False)
    assert missing.returncode == 2 and "--storage s3://no-such-bucket/x: cannot list the bucket" in missing.stderr
    assert "Traceback" not in missing.stderr
    unknown = togi("serve", "--data-dir", tmp_path, "--storage", "nosuch://x", check=False)
    assert unknown.returncode == 2 and "--storage nosuch://x" in unknown.stderr and "Traceback" not in unknown.stderr


def test_an_upload_the_bucket_refuses_is_a_503_that_leaves_nothing_behind(tmp_path, bucket, tiny_model_dir):
    import s3fs

    data_dir = tmp_path / "data"
    server = Server(data_dir, tiny_model_dir, "--storage", bucket).start()
    try:
        key = togi("serve", "keys", "create", "--org", "acme", "--data-dir", data_dir).stdout.strip()
        client = server.client(key)
        s3fs.S3FileSystem().rm(bucket.removeprefix("s3://").split("/")[0], recursive=True)  # the bucket is gone
        with pytest.raises(openai.APIStatusError) as refused:
            upload(client, write_jsonl(tmp_path / "shop.jsonl", distinct_chats(12)))
        assert refused.value.status_code == 503
        assert f"object storage {bucket}: cannot store" in refused.value.message and "AWS_ENDPOINT_URL" in refused.value.message
        assert client.files.list().data == [] and list((data_dir / "files").iterdir()) == []  # no record, no file
    finally:
        server.stop()
