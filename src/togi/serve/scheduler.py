"""The job queue: validates new jobs, runs queued ones (N at a time) through an executor, and watches them.

Job states: validating_files -> queued -> running -> succeeded | failed | cancelled, and running <->
paused. The executor (``executors.py``) runs each job process: a child of the server (``local``) or a task on a Ray
cluster (``ray``). Cancel and pause stop it (a process group killed, a Ray task cancelled). A job process that ends
without finishing its job fails the job. When the server starts, jobs left running by a server that died are put back
in the queue, and their job processes (if still alive) are stopped first: the job resumes from its last checkpoint.

Several API replicas may share one database (PostgreSQL). Each names its machine (``replica``, the host name by
default): it validates and starts only the jobs it claims (``Store.claim``: a compare-and-set on the job's status, so
two replicas never both take one), recovers only its machine's jobs whose server died (a job process whose parent
is alive belongs to another replica there), and stops a job of its own that another replica cancelled or paused.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

from togi.serve.executors import Executor, LocalExecutor
from togi.serve.job_record import FineTuningJob, claim_job, get_job, list_jobs, update_job
from togi.serve.jobs import add_event, job_directory, job_file, redact_paths, resolve_hyperparameters, validate_training_file
from togi.serve.storage import Storage
from togi.serve.store import Store


def processes_of(job: FineTuningJob) -> int:
    return int(job["internal"].get("processes") or 1)


class Scheduler:
    def __init__(self, store: Store, data_dir: Path, slots: int = 1, poll_seconds: float = 0.5, replica: str = "local",
                 executor: Executor | None = None, storage: Storage | None = None) -> None:
        self.store, self.data_dir, self.slots, self.poll_seconds, self.replica = store, data_dir, slots, poll_seconds, replica
        self.executor = executor or LocalExecutor()
        self.storage = storage or Storage(data_dir)
        self.children: dict[str, Any] = {}  # each running job's handle from the executor
        self.processes: dict[str, int] = {}  # each running job's training processes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="togi-scheduler", daemon=True)

    def start(self) -> None:
        self._recover()
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and the job processes; their jobs go back to the queue for the next start."""
        self._stop.set()
        self._thread.join(timeout=10)
        with self._lock:
            for job_id, child in list(self.children.items()):
                self.executor.stop(child)
                self._requeue(job_id, "The server stopped; the job is queued again and will resume from its last checkpoint")
            self.children.clear()

    def _recover(self) -> None:
        for job in list_jobs(self.store, status="validating_files"):
            if job["internal"].get("validator") == self.replica:  # this replica stopped while validating it
                update_job(self.store, job["id"], internal={**job["internal"], "validator": None})
        for job in list_jobs(self.store, status="running"):
            if job["internal"].get("replica", self.replica) != self.replica:
                continue  # another machine's job
            if not self.executor.orphaned(job):
                continue  # a living server runs it
            self._requeue(job["id"], "The server restarted; the job is queued again and will resume from its last checkpoint")

    def _requeue(self, job_id: str, message: str) -> None:
        job = get_job(self.store, job_id)
        if job and job["status"] == "running":
            update_job(self.store, job_id, status="queued", internal={**job["internal"], "pid": None, "ray_task": None})
            add_event(self.store, job, message, level="warn")

    # requests from the API
    def cancel(self, job: FineTuningJob) -> FineTuningJob:
        return self._halt(job, "cancelled", "The job was cancelled")

    def pause(self, job: FineTuningJob) -> FineTuningJob:
        return self._halt(job, "paused", "The job was paused; resume it to continue from its last checkpoint")

    def resume(self, job: FineTuningJob) -> FineTuningJob:
        job = update_job(self.store, job["id"], status="queued")
        add_event(self.store, job, "The job was resumed and is queued")
        return job

    def _halt(self, job: FineTuningJob, status: str, message: str) -> FineTuningJob:
        with self._lock:
            job = update_job(self.store, job["id"], status=status, **({"finished_at": int(time.time())} if status == "cancelled" else {}))
            child = self.children.pop(job["id"], None)
        if child is not None:
            self.executor.stop(child)
        add_event(self.store, job, message)
        return job

    # the loop
    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.tick()
            except Exception as error:  # keep scheduling whatever one job did
                print(f"togi serve: scheduler error: {error!r}", file=sys.stderr)

    def tick(self) -> None:
        for job in reversed(list_jobs(self.store, status="validating_files")):
            if not job["internal"].get("validator"):
                self._validate(job)
        self._follow_other_replicas()
        self._reap()
        queued = list(reversed(list_jobs(self.store, status="queued")))
        with self._lock:
            for job in queued:  # oldest first; a job waits for as many free slots as it has processes, and those after it wait too
                if processes_of(job) > self.slots - self.busy_slots():
                    break
                self._launch(job)

    def busy_slots(self) -> int:
        """The worker slots the running jobs hold: one per training process."""
        return sum(self.processes[job_id] for job_id in self.children)

    def _follow_other_replicas(self) -> None:
        """Stop the processes of this replica's jobs that another replica cancelled or paused."""
        with self._lock:
            for job_id, child in list(self.children.items()):
                job = get_job(self.store, job_id)
                if job is not None and job["status"] != "running":
                    self.executor.stop(child)
                    del self.children[job_id]
                    self.processes.pop(job_id, None)

    def _validate(self, job: FineTuningJob) -> None:
        claimed = claim_job(self.store, job["id"], {"status": "validating_files", "internal": job["internal"]},
                            internal={**job["internal"], "validator": self.replica})
        if claimed is None:
            return  # another replica is validating it
        job = claimed
        model, method = job["internal"]["model_reference"], job["method"]["type"]
        add_event(self.store, job, f"Validating training file: {job['training_file']}")
        error, size = validate_training_file(self.storage.materialize(job_file(self.data_dir, job, "training_file")), model, method)
        validation = job_file(self.data_dir, job, "validation_file")
        if error is None and validation:
            error, _ = validate_training_file(self.storage.materialize(validation), model, method)
            if error:
                error = {**error, "code": "invalid_validation_file", "param": "validation_file"}
        if error:
            self._fail(job, {**error, "message": redact_paths(error["message"], job, self.data_dir)})
            return
        hyperparameters = resolve_hyperparameters(job["hyperparameters"], size["n_examples"], method)
        job = update_job(self.store, job["id"], status="queued", hyperparameters=hyperparameters,
                         method={"type": method, method: {"hyperparameters": hyperparameters}}, internal={**job["internal"], **size})
        add_event(self.store, job, "Files validated, moving job to queued state")

    def _launch(self, job: FineTuningJob) -> None:
        log_path = job_directory(self.data_dir, job["id"]) / "process.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        claimed = claim_job(self.store, job["id"], {"status": "queued"}, status="running", internal={**job["internal"], "replica": self.replica})
        if claimed is None:
            return  # another replica started it
        job = claimed
        environment = {"TOGI_DATABASE": getattr(self.store, "url", ""), "TOGI_STORAGE": self.storage.url}
        try:
            child = self.executor.launch(job["id"], self.data_dir, environment, log_path, processes_of(job))
        except Exception as error:  # the job cannot start (a Ray cluster without a node large enough): it fails, and says why
            message = f"the job could not be started: {error}" + (f" ({error.hint})" if getattr(error, "hint", "") else "")
            self._fail(job, {"code": "training_failed", "message": redact_paths(message, job, self.data_dir), "param": None})
            return
        self.children[job["id"]] = child
        self.processes[job["id"]] = processes_of(job)
        update_job(self.store, job["id"], internal={**job["internal"], **self.executor.describe(child)})

    def _reap(self) -> None:
        with self._lock:
            for job_id, child in list(self.children.items()):
                ended = self.executor.ended(child)
                if ended is None:
                    continue
                del self.children[job_id]
                self.processes.pop(job_id, None)
                job = get_job(self.store, job_id)
                if job and job["status"] == "running":  # the process died without finishing its job
                    self._fail(job, {"code": "training_failed", "param": None, "message": f"the training process stopped unexpectedly "
                                     f"({ended}); the server's log of the job has the details"},
                               event=f"The training process exited with {ended}")

    def _fail(self, job: FineTuningJob, error: dict[str, Any], event: str | None = None) -> None:
        """The job fails with ``error`` (OpenAI's code, message and param), and an error event (its message, unless given)."""
        update_job(self.store, job["id"], status="failed", error=error, finished_at=int(time.time()))
        add_event(self.store, job, event or error["message"], level="error")

    def running(self) -> list[str]:
        with self._lock:
            return list(self.children)

