"""Fine-tuning jobs: the rules for hyper-parameters and names, file validation, and the job process.

Each job trains in its own process (``python -m togi.serve.jobs DATA_DIR JOB_ID``) so that cancelling
kills it cleanly and a crash cannot take the server down. The process trains a LoRA adapter with
togi's training engine into ``DATA_DIR/jobs/<job>/run`` and reports through the store: step metrics
and checkpoints become events and checkpoint records as they appear in the run directory. A job that
starts again (after a pause, or after the server was killed) resumes from its last checkpoint.

Jobs of ``method.type`` ``dpo`` train togi's DPO stage (LoRA, beta "auto" = 0.1, learning rate 5e-5 times
the multiplier) on preference pairs in OpenAI's format.

"auto" hyper-parameters, from the number of training examples N:
- ``n_epochs``: 3, raised so the job makes at least 100 example passes (ceil(100 / N), at most 10),
  and 1 for N above 25,000 (OpenAI's rule has the same shape);
- ``batch_size``: N // 50, between 1 and 8;
- ``learning_rate_multiplier``: 1.0, times togi's LoRA learning rate 2e-4.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from togi.runs import Run, checkpoint_step
from togi.serve.job_record import FineTuningJob, get_job, update_job
from togi.serve.database import open_store
from togi.serve.storage import Storage, StorageUnavailable
from togi.serve.store import Store, new_id

if TYPE_CHECKING:
    from togi.config import TrainConfig

BASE_LEARNING_RATE = 2e-4
DPO_LEARNING_RATE = 5e-5  # togi's default for DPO with LoRA (see togi.train.preference)
MIN_EXAMPLES = 10
TERMINAL = ("succeeded", "failed", "cancelled")


def resolve_hyperparameters(requested: dict[str, Any], n_examples: int, method: str = "supervised") -> dict[str, Any]:
    def given(name: str) -> Any:
        value = requested.get(name, "auto")
        return None if value in (None, "auto") else value

    epochs = given("n_epochs") or (1 if n_examples > 25_000 else min(10, max(3, math.ceil(100 / max(n_examples, 1)))))
    batch_size = given("batch_size") or min(8, max(1, n_examples // 50))
    multiplier = given("learning_rate_multiplier") or 1.0
    resolved = {"n_epochs": int(epochs), "batch_size": int(batch_size), "learning_rate_multiplier": float(multiplier)}
    if method == "dpo":
        resolved["beta"] = float(given("beta") or 0.1)
    return resolved


def fine_tuned_model_name(base: str, organization: str, suffix: str | None, job_id: str) -> str:
    return f"ft:{base}:{organization}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def user_message(error: BaseException, job: FineTuningJob, data_dir: Path) -> str:
    """A failure as the client may read it: the error's first line, with the server's paths replaced by what
    the client knows them as (its file ids, the job's run)."""
    return redact_paths((str(error).strip().splitlines() or [type(error).__name__])[0], job, data_dir)


def redact_paths(text: str, job: FineTuningJob, data_dir: Path) -> str:
    """``text`` with the server's paths replaced by what the client knows them as: its file ids, the job."""
    for param in ("training_file", "validation_file"):
        path = job_file(data_dir, job, param)
        if path and job.get(param):
            text = text.replace(str(path), job[param])
    run_of_the_job = f"the run of {job['id']}"
    text = text.replace(str(job_directory(data_dir, job["id"]) / "run"), run_of_the_job)
    text = text.replace(str(job_directory(data_dir, job["id"])), run_of_the_job)
    return text.replace(str(data_dir), "the server's data directory")


def job_directory(data_dir: Path, job_id: str) -> Path:
    return data_dir / "jobs" / job_id


def job_file(data_dir: Path, job: FineTuningJob, param: str) -> Path | None:
    """A job's training or validation file on this machine. The job keeps its path relative to the data directory
    (jobs created before object storage keep an absolute one, which ``/`` leaves as it is)."""
    path = job.get("internal", {}).get("paths", {}).get(param)
    return data_dir / path if path else None


def add_event(store: Store, job: FineTuningJob, message: str, level: str = "info", kind: str = "message",
              data: dict[str, Any] | None = None) -> None:
    event = {"object": "fine_tuning.job.event", "id": new_id("ftevent"), "created_at": int(time.time()), "level": level,
             "message": message, "type": kind, "data": data or {}}
    store.put("event", event, job["organization_id"], parent=job["id"])


def validate_training_file(path: Path, model_reference: str, method: str = "supervised") -> tuple[dict[str, Any] | None, dict[str, int]]:
    """Check a training file with the data toolkit. Returns the job error (or None) and its size."""
    from togi.data.examples import ExampleKind
    from togi.data.findings import Severity, sort_findings
    from togi.data.formats import load_dataset
    from togi.data.reader import DataFileError
    from togi.data.validate import CheckOptions, check_dataset
    from togi.models.resolve import load_tokenizer

    try:
        dataset = load_dataset(path)
    except DataFileError as error:
        return {"code": "invalid_training_file", "message": f"the training file cannot be read: {error}", "param": "training_file"}, {}
    wanted = ExampleKind.PREFERENCE if method == "dpo" else ExampleKind.CHAT
    if dataset.examples and dataset.kind is not wanted:
        what = "preference pairs ({input, preferred_output, non_preferred_output})" if method == "dpo" else "chat examples ({messages})"
        return {"code": "invalid_training_file", "param": "training_file",
                "message": f"a {method} job needs {what}; the training file holds {dataset.kind.value} examples"}, {}
    report = check_dataset(dataset, load_tokenizer(model_reference), CheckOptions(min_examples=MIN_EXAMPLES))
    errors = [finding for finding in sort_findings(report.findings) if finding.severity is Severity.ERROR]
    size = {"n_examples": len(dataset.examples), "tokens_per_epoch": report.stats.tokens_per_epoch}
    if not errors:
        return None, size
    first = next((finding for finding in errors if finding.line), errors[0])  # a line to look at, where there is one
    code = "invalid_n_examples" if first.code == "too_few_examples" else "invalid_training_file"
    where = f" line {first.line}" if first.line else ""  # a problem of the whole file (too few examples) has no line
    if first.example is not None:
        where += f", example {first.example}"
    if first.message_index is not None:
        where += f", message {first.message_index}"
    more = f" ({len(errors) - 1} more errors)" if len(errors) > 1 else ""
    message = f"Training file{where}: {first.message}{' in ' + first.field if first.field else ''} [{first.code}]{more}. {first.hint}"
    return {"code": code, "message": message, "param": "training_file"}, size


def train_config(job: dict[str, Any], data_dir: Path) -> TrainConfig:
    """The recipe a job trains with, built as a mapping (paths and names are values, never parsed as text)."""
    from togi.config import load_config

    internal, hyper = job["internal"], job["hyperparameters"]
    dpo = job["method"]["type"] == "dpo"
    steps_per_epoch = math.ceil(internal["n_examples"] / hyper["batch_size"])
    validation = job_file(data_dir, job, "validation_file")
    recipe: dict[str, Any] = {
        "model": internal["model_reference"], "method": "lora",
        "output_dir": str(job_directory(data_dir, job["id"]) / "run"),
        "data": {"train_file": str(job_file(data_dir, job, "training_file")), **({"val_file": str(validation)} if validation else {"val_ratio": 0})},
        "training": {"epochs": hyper["n_epochs"], "batch_size": hyper["batch_size"], "gradient_accumulation": 1,
                     "learning_rate": (DPO_LEARNING_RATE if dpo else BASE_LEARNING_RATE) * hyper["learning_rate_multiplier"]},
        "monitoring": {"save_every": steps_per_epoch, "keep_checkpoints": 3, "log_every": 1, "eval_every": steps_per_epoch, "samples": 0},
    }
    if job.get("seed") is not None:
        recipe["training"]["seed"] = job["seed"]
    if dpo:
        recipe |= {"stage": "dpo", "preference": {"beta": hyper["beta"]}}
    return load_config(None, base=recipe)


SUPERSEDED_EXIT_CODE = 75


def take_over(store: Store, job: FineTuningJob) -> str:
    """Make this process the job's one runner: a new token in the job's attempt record (a record of its own, which only
    job processes write). A process that an executor started again elsewhere (a Ray task retried after its node was
    lost) takes over; the one it replaced, should it still be alive, sees the token change and stops."""
    token, record_id = new_id("attempt"), f"attempt-{job['id']}"
    if store.get("job_attempt", record_id) is None:
        try:
            store.put("job_attempt", {"id": record_id, "object": "togi.job_attempt", "token": token}, job["organization_id"], parent=job["id"])
            return token
        except Exception:  # another process put it first: take it over as below
            pass
    store.update("job_attempt", record_id, token=token)
    return token


def still_runner(store: Store, job: FineTuningJob, token: str) -> bool:
    record = store.get("job_attempt", f"attempt-{job['id']}")
    return record is not None and record["token"] == token


def stop_superseded(store: Store, job: FineTuningJob, token: str) -> None:
    """End this job process at once when another has taken the job over: no event, metric or model from it after that."""
    if not still_runner(store, job, token):
        print(f"togi: another process took over {job['id']}; this one stops", file=sys.stderr, flush=True)
        os._exit(SUPERSEDED_EXIT_CODE)  # from the watcher's thread too; training ranks die with this process


class RunWatcher:
    """Turns what the trainer writes into the run directory into events and checkpoint records."""

    def __init__(self, store: Store, job: FineTuningJob, data_dir: Path, total_steps: int, storage: Storage | None = None,
                 token: str | None = None) -> None:
        self.store, self.job, self.data_dir, self.total_steps, self.token = store, job, data_dir, total_steps, token
        self.storage = storage or Storage(data_dir)
        self.run = Run(job_directory(data_dir, job["id"]) / "run")
        self.reported_step = job["internal"].get("reported_step", 0)
        self.reported_eval_step = job["internal"].get("reported_eval_step", 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RunWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()

    def _loop(self) -> None:
        warned = False
        while not self._stop.wait(0.5):
            try:
                self.poll()
            except StorageUnavailable as error:  # the checkpoint is published, and announced, at a later poll
                if not warned:
                    add_event(self.store, self.job, f"{error}; retrying", level="warn")
                warned = True

    def poll(self) -> None:
        if self.token is not None:
            stop_superseded(self.store, self.job, self.token)
        records = self.run.metrics()
        for record in records:
            if "train_loss" in record and record["step"] > self.reported_step:
                self.reported_step = record["step"]
                data = {"step": record["step"], "total_steps": self.total_steps, "train_loss": record["train_loss"],
                        "train_mean_token_accuracy": record.get("train_token_accuracy"),
                        "valid_loss": None, "valid_mean_token_accuracy": None,
                        "learning_rate": record.get("learning_rate"), "tokens_per_second": record.get("tokens_per_second")}
                add_event(self.store, self.job, f"Step {record['step']}/{self.total_steps}: training loss={record['train_loss']:.4f}",
                          kind="metrics", data=data)
                self._remember()
            if "eval_loss" in record and record["step"] > self.reported_eval_step:
                self.reported_eval_step = record["step"]
                data = {"step": record["step"], "total_steps": self.total_steps, "train_loss": None, "train_mean_token_accuracy": None,
                        "valid_loss": record["eval_loss"], "valid_mean_token_accuracy": record.get("eval_token_accuracy")}
                add_event(self.store, self.job, f"Step {record['step']}/{self.total_steps}: validation loss={record['eval_loss']:.4f}",
                          kind="metrics", data=data)
                self._remember()
        for checkpoint in self.run.checkpoints():
            self._record_checkpoint(checkpoint, records)

    def _remember(self) -> None:
        """Keep what was reported in the job, so a resumed job does not report a step twice."""
        self.job["internal"].update(reported_step=self.reported_step, reported_eval_step=self.reported_eval_step)
        update_job(self.store, self.job["id"], internal=self.job["internal"])

    def _record_checkpoint(self, checkpoint: Path, records: list[dict[str, Any]]) -> None:
        step = checkpoint_step(checkpoint)
        checkpoint_id = f"ftckpt-{self.job['id'].removeprefix('ftjob-')}-{step}"
        adapter = checkpoint / "adapter_model.safetensors"
        if self.store.get("checkpoint", checkpoint_id) or not adapter.is_file() or not (checkpoint / "trainer_state.json").is_file():
            return
        kept = job_directory(self.data_dir, self.job["id"]) / "checkpoints" / f"step-{step}"
        staging = kept.with_name(f".{kept.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copy2(checkpoint / name, staging / name)
        shutil.rmtree(kept, ignore_errors=True)
        staging.rename(kept)
        self._publish(checkpoint, kept)
        last = next((r for r in reversed(records) if r["step"] <= step and "train_loss" in r), {})
        model_id = f"{self.job['internal']['fine_tuned_model']}:ckpt-step-{step}"
        record = {"object": "fine_tuning.job.checkpoint", "id": checkpoint_id, "created_at": int(time.time()),
                  "fine_tuned_model_checkpoint": model_id, "fine_tuning_job_id": self.job["id"], "step_number": step,
                  "metrics": {"step": step, "train_loss": last.get("train_loss"), "train_mean_token_accuracy": last.get("train_token_accuracy")}}
        self.store.put("checkpoint", record, self.job["organization_id"], parent=self.job["id"])
        add_model(self.store, model_id, self.job, kept, self.data_dir, checkpoint_of=self.job["internal"]["fine_tuned_model"])
        add_event(self.store, self.job, f"Checkpoint created at step {step}: {model_id}")


    def _publish(self, checkpoint: Path, kept: Path) -> None:
        """To the bucket, where the storage is one, before the checkpoint is announced: the checkpoint (for a resume on
        another machine), its adapter (for inference anywhere), and the run's other files as they are now."""
        self.storage.publish(checkpoint)
        self.storage.publish(kept)
        self.storage.publish(self.run.path, skip=("checkpoints/",))
        self.storage.remove_missing(self.run.path, "checkpoints")  # those the trainer rotated out


def add_model(store: Store, model_id: str, job: FineTuningJob, adapter_dir: Path, data_dir: Path, checkpoint_of: str | None = None) -> None:
    """A model record; its adapter's path is relative to the data directory, which may be another on each machine."""
    adapter = adapter_dir.resolve().relative_to(data_dir.resolve()).as_posix()
    model = {"id": model_id, "object": "model", "created": int(time.time()), "owned_by": job["organization_id"],
             "internal": {"base": job["model"], "adapter": adapter, "job": job["id"], "checkpoint_of": checkpoint_of}}
    if store.get("model", model_id) is None:
        store.put("model", model, job["organization_id"], parent=job["id"])


def results_csv(run_dir: Path) -> str:
    """The results file: one row per logged step, in OpenAI's columns."""
    rows: dict[int, dict[str, Any]] = {}
    for record in Run(run_dir).metrics():
        row = rows.setdefault(record["step"], {"step": record["step"]})
        if "train_loss" in record:
            row.update(train_loss=record["train_loss"], train_accuracy=record.get("train_token_accuracy"))
        if "eval_loss" in record:
            row.update(valid_loss=record["eval_loss"], valid_mean_token_accuracy=record.get("eval_token_accuracy"))
    out = io.StringIO()
    writer = csv.DictWriter(out, ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"], lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue()


def _train(config: TrainConfig, resume_dir: Path | None, processes: int) -> Path:
    """Train in this process, or on several through togi train's launcher (each rank a child of this one, so that
    cancelling the job's process group ends them all)."""
    from togi.train import train

    if processes == 1:
        return train(config, resume_dir=resume_dir, log=lambda message: None).output_dir
    from togi.train.launch import Launch, launch_training

    launch_training(Launch(processes), config, resume_dir=resume_dir)
    return Run(config.output_dir).output_dir_for(config)


def _fail(store: Store, job: FineTuningJob, data_dir: Path, error: Exception) -> int:
    """Fail the job with the error's own words (unless it was cancelled or paused meanwhile); the job process's exit code."""
    if get_job(store, job["id"])["status"] == "running":
        message = user_message(error, job, data_dir)
        update_job(store, job["id"], status="failed", finished_at=int(time.time()),
                   error={"code": "training_failed", "message": message, "param": None})
        add_event(store, job, f"The job failed: {message}", level="error")
    return 1


def run_job(data_dir: Path, job_id: str) -> int:
    """The job process: train, report, and leave the job in a terminal state (unless it was cancelled or paused)."""
    from togi.serve.files import store_bytes

    store = open_store(os.environ.get("TOGI_DATABASE") or None, data_dir)  # the server's own store (TOGI_DATABASE: its URL)
    storage = Storage(data_dir, os.environ.get("TOGI_STORAGE") or None)  # and its storage (TOGI_STORAGE: a bucket's URL)
    job = get_job(store, job_id)
    if job is None or job["status"] != "running":
        return 0
    token = take_over(store, job)
    run_dir = job_directory(data_dir, job_id) / "run"
    try:
        for param in ("training_file", "validation_file"):
            if path := job_file(data_dir, job, param):
                storage.materialize(path)
        storage.refresh(run_dir)  # the run as the bucket has it: this may be another machine than the one that began it
    except StorageUnavailable as error:
        return _fail(store, job, data_dir, error)
    resuming = Run.is_run(run_dir)
    total_steps = math.ceil(job["internal"]["n_examples"] / job["hyperparameters"]["batch_size"]) * job["hyperparameters"]["n_epochs"]
    checkpoints = Run(run_dir).checkpoints() if resuming else []
    where = f" on {os.environ['TOGI_NODE']}" if os.environ.get("TOGI_NODE") else ""  # set by the ray executor
    add_event(store, job, f"Fine-tuning job resumed{where} from the checkpoint at step {checkpoint_step(checkpoints[-1])}" if checkpoints
              else f"Fine-tuning job started{where}")
    try:
        config = train_config(job, data_dir)  # a recipe error fails the job with its own words, like a training error
        with RunWatcher(store, job, data_dir, total_steps, storage, token):
            output_dir = _train(config, run_dir if resuming else None, int(job["internal"].get("processes") or 1))
        storage.publish(run_dir, skip=("checkpoints/",))  # the trained adapter and the run's record, for inference anywhere
    except Exception as error:  # the job fails; the server goes on
        stop_superseded(store, job, token)
        return _fail(store, job, data_dir, error)
    stop_superseded(store, job, token)
    results = store_bytes(store, data_dir, job["organization_id"], f"step_metrics_{job_id}.csv", "fine-tune-results",
                          results_csv(run_dir).encode("utf-8"), storage=storage)
    model_name = job["internal"]["fine_tuned_model"]
    add_model(store, model_name, job, output_dir, data_dir)
    add_event(store, job, f"New fine-tuned model created: {model_name}")
    if get_job(store, job_id)["status"] == "running":
        update_job(store, job_id, status="succeeded", finished_at=int(time.time()), result_files=[results["id"]],
                   fine_tuned_model=model_name, trained_tokens=job["internal"]["tokens_per_epoch"] * job["hyperparameters"]["n_epochs"])
        add_event(store, job, "The job has successfully completed")
    return 0


if __name__ == "__main__":
    if os.environ.get("TOGI_END_WITH_PARENT"):  # under a Ray worker: a cancelled task or a lost node ends the job process too
        from togi.process_tree import end_with_parent

        end_with_parent(signal.SIGTERM)
    sys.exit(run_job(Path(sys.argv[1]), sys.argv[2]))
