"""The job queue: validates new jobs, runs queued ones in child processes (N at a time), and watches them.

Job states: validating_files -> queued -> running -> succeeded | failed | cancelled, and running <->
paused. Cancel and pause kill the job's process group (SIGTERM, then SIGKILL). A process that dies
without finishing its job fails the job. When the server starts, jobs left running by a server that
died are put back in the queue, and their job processes (if still alive) are stopped first: the job
resumes from its last checkpoint.

Several API replicas may share one database (PostgreSQL). Each names its machine (``replica``, the host name by
default): it validates and starts only the jobs it claims (``Store.claim``: a compare-and-set on the job's status, so
two replicas never both take one), recovers only its machine's jobs whose server died (a job process whose parent
is alive belongs to another replica there), and stops a job of its own that another replica cancelled or paused.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from togi.serve.job_record import FineTuningJob, claim_job, get_job, list_jobs, update_job
from togi.serve.jobs import add_event, job_directory, redact_paths, resolve_hyperparameters, validate_training_file
from togi.serve.store import Store


def _stop_process_group(pid: int, grace: float = 5.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def processes_of(job: FineTuningJob) -> int:
    return int(job["internal"].get("processes") or 1)


def _parent_of(pid: int) -> int | None:
    """The parent process of ``pid`` (1 once its parent died and init adopted it), None when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _is_job_process(pid: int | None, job_id: str) -> bool:
    try:
        return pid is not None and job_id in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


class Scheduler:
    def __init__(self, store: Store, data_dir: Path, slots: int = 1, poll_seconds: float = 0.5, replica: str = "local") -> None:
        self.store, self.data_dir, self.slots, self.poll_seconds, self.replica = store, data_dir, slots, poll_seconds, replica
        self.children: dict[str, subprocess.Popen] = {}
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
                _stop_process_group(child.pid)
                self._requeue(job_id, "The server stopped; the job is queued again and will resume from its last checkpoint")
            self.children.clear()

    def _recover(self) -> None:
        for job in list_jobs(self.store, status="validating_files"):
            if job["internal"].get("validator") == self.replica:  # this replica stopped while validating it
                update_job(self.store, job["id"], internal={**job["internal"], "validator": None})
        for job in list_jobs(self.store, status="running"):
            if job["internal"].get("replica", self.replica) != self.replica:
                continue  # another machine's job
            pid = job["internal"].get("pid")
            if _is_job_process(pid, job["id"]):
                if _parent_of(pid) not in (None, 1):
                    continue  # a living server on this machine (another replica) runs it
                _stop_process_group(pid)  # its server died: the orphan stops, the job resumes from its checkpoint
            self._requeue(job["id"], "The server restarted; the job is queued again and will resume from its last checkpoint")

    def _requeue(self, job_id: str, message: str) -> None:
        job = get_job(self.store, job_id)
        if job and job["status"] == "running":
            update_job(self.store, job_id, status="queued", internal={**job["internal"], "pid": None})
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
            _stop_process_group(child.pid)
            child.wait()
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
                    _stop_process_group(child.pid)
                    child.wait()
                    del self.children[job_id]
                    self.processes.pop(job_id, None)

    def _validate(self, job: FineTuningJob) -> None:
        claimed = claim_job(self.store, job["id"], {"status": "validating_files", "internal": job["internal"]},
                            internal={**job["internal"], "validator": self.replica})
        if claimed is None:
            return  # another replica is validating it
        job = claimed
        paths, model, method = job["internal"]["paths"], job["internal"]["model_reference"], job["method"]["type"]
        add_event(self.store, job, f"Validating training file: {job['training_file']}")
        error, size = validate_training_file(Path(paths["training_file"]), model, method)
        if error is None and paths.get("validation_file"):
            error, _ = validate_training_file(Path(paths["validation_file"]), model, method)
            if error:
                error = {**error, "code": "invalid_validation_file", "param": "validation_file"}
        if error:
            error = {**error, "message": redact_paths(error["message"], job, self.data_dir)}
            update_job(self.store, job["id"], status="failed", error=error, finished_at=int(time.time()))
            add_event(self.store, job, error["message"], level="error")
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
        with open(log_path, "ab") as log:
            child = subprocess.Popen([sys.executable, "-m", "togi.serve.jobs", str(self.data_dir), job["id"]], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, "TOGI_DATABASE": getattr(self.store, "url", "")})
        self.children[job["id"]] = child
        self.processes[job["id"]] = processes_of(job)
        update_job(self.store, job["id"], internal={**job["internal"], "pid": child.pid})

    def _reap(self) -> None:
        with self._lock:
            for job_id, child in list(self.children.items()):
                if child.poll() is None:
                    continue
                del self.children[job_id]
                self.processes.pop(job_id, None)
                job = get_job(self.store, job_id)
                if job and job["status"] == "running":  # the process died without finishing its job
                    update_job(self.store, job_id, status="failed", finished_at=int(time.time()),
                               error={"code": "training_failed", "param": None,
                                      "message": f"the training process stopped unexpectedly (exit code {child.returncode}); "
                                                 "the server's log of the job has the details"})
                    add_event(self.store, job, f"The training process exited with code {child.returncode}", level="error")

    def running(self) -> list[str]:
        with self._lock:
            return list(self.children)

