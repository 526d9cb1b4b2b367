"""Where job processes run: as children of this server (``local``, the default) or as tasks on a Ray cluster (``ray``).

Either way a job is one process, ``python -m togi.serve.jobs DATA_DIR JOB_ID``, that reads its job from the server's
database (``TOGI_DATABASE``) and writes its events, metrics and checkpoints there as they happen; the executor only
starts it, tells when it ended, and stops it. The scheduler (``scheduler.py``) decides what runs and when.

``ray``: each job is a Ray task that asks for the job's training processes as GPUs (as CPUs on a cluster without
GPUs). The task starts the job process as its child, set to die with it (``end_with_parent``), so cancelling the task
(``ray.cancel(force=True)``: Ray kills the worker) ends the training on its node. A node that dies mid-job fails the
task with a system error; Ray runs it again on another node (``max_retries``), and the job process there finds the
job still ``running`` and resumes from the last checkpoint the storage holds. The data directory must then be the
same on every node: a shared file system, or object storage (``--storage s3://...``, see ``storage.py``) with the
data directory as each node's scratch space.

Slurm and Kubernetes Jobs would be two more classes with these five methods; Kubernetes first, because a company that
runs the API behind a load balancer already runs it on Kubernetes (a Job per fine-tuning job, its GPUs as resource
limits, cancel as a Job deletion, restart on another node from ``backoffLimit``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from togi.errors import TogiError

RAY_RETRIES = 3  # node failures a job survives


@dataclass(frozen=True)
class Ended:
    """A job process that ended: its exit code, and what the executor knows of why (empty when it just exited)."""

    code: int
    reason: str = ""

    def __str__(self) -> str:
        return f"exit code {self.code}" + (f": {self.reason}" if self.reason else "")


class Executor(Protocol):
    name: str

    def launch(self, job_id: str, data_dir: Path, environment: dict[str, str], log_path: Path, processes: int) -> Any:
        """Start the job process; returns a handle for the other methods."""

    def ended(self, handle: Any) -> Ended | None:
        """None while the job process runs."""

    def stop(self, handle: Any) -> None:
        """End the job process and wait until it has."""

    def describe(self, handle: Any) -> dict[str, Any]:
        """What the job record keeps of the handle (for recovery after a restart)."""

    def orphaned(self, job: dict[str, Any]) -> bool:
        """At start-up, for a job this replica left running: True once nothing runs it any more (it is stopped here
        if need be), False when a living server runs it."""


def job_command(data_dir: Path, job_id: str) -> list[str]:
    return [sys.executable, "-m", "togi.serve.jobs", str(data_dir), job_id]


def stop_process_group(pid: int, grace: float = 5.0) -> None:
    """SIGTERM to the process group, then SIGKILL to what is left of it after ``grace`` seconds."""
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


class LocalExecutor:
    """Job processes as children of the server, each in a session of its own (cancelling kills its process group)."""

    name = "local"

    def launch(self, job_id: str, data_dir: Path, environment: dict[str, str], log_path: Path, processes: int) -> subprocess.Popen:
        with open(log_path, "ab") as log:
            return subprocess.Popen(job_command(data_dir, job_id), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, **environment})

    def ended(self, child: subprocess.Popen) -> Ended | None:
        return None if child.poll() is None else Ended(child.returncode)

    def stop(self, child: subprocess.Popen) -> None:
        stop_process_group(child.pid)
        child.wait()

    def describe(self, child: subprocess.Popen) -> dict[str, Any]:
        return {"pid": child.pid}

    def orphaned(self, job: dict[str, Any]) -> bool:
        pid = job["internal"].get("pid")
        if _is_job_process(pid, job["id"]):
            if _parent_of(pid) not in (None, 1):
                return False  # a living server on this machine (another replica) runs it
            stop_process_group(pid)  # its server died: the orphan stops, the job resumes from its checkpoint
        return True


def _job_on_node(data_dir: str, job_id: str, environment: dict[str, str]) -> int:
    """The Ray task: the job process as a child of this worker, which dies with it (a cancelled task, a lost node)."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    log_path = Path(data_dir) / "jobs" / job_id / "process.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        child = subprocess.Popen(job_command(Path(data_dir), job_id), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **environment, "TOGI_NODE": f"Ray node {node[:12]}", "TOGI_END_WITH_PARENT": "1"})
        return child.wait()


FORWARDED = ("TOGI_", "HF_", "TRANSFORMERS_", "AWS_", "FSSPEC_")  # the server's settings the job process needs on a node


class RayExecutor:
    """Job processes as Ray tasks on a cluster (``address``: "auto" for the cluster this machine is part of, or
    ray://host:10001 for Ray Client)."""

    name = "ray"

    def __init__(self, address: str) -> None:
        try:
            import ray
        except ImportError as error:
            raise TogiError("--executor ray needs Ray", hint="pip install 'togi[cluster]'") from error
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise TogiError(f"--ray-address {address}: cannot connect to a Ray cluster ({str(error).splitlines()[0]})",
                            hint="start one with `ray start --head` and pass its address, or `auto` on one of its nodes") from error
        self.ray = ray
        self.task = ray.remote(max_retries=RAY_RETRIES, retry_exceptions=False)(_job_on_node)

    def launch(self, job_id: str, data_dir: Path, environment: dict[str, str], log_path: Path, processes: int) -> Any:
        resource = "GPU" if self.ray.cluster_resources().get("GPU", 0) else "CPU"
        largest = max((node["Resources"].get(resource, 0) for node in self.ray.nodes() if node["Alive"]), default=0)
        if processes > largest:  # Ray would keep the task pending for ever
            raise TogiError(f"the job's {processes} training processes need {processes} {resource}s on one node, and the largest "
                            f"node of the Ray cluster has {largest:g}",
                            hint="ask for fewer processes (extra_body={'processes': N}), or add a larger node to the cluster")
        resources = {"num_gpus": processes, "num_cpus": 1} if resource == "GPU" else {"num_cpus": processes}
        forwarded = {name: value for name, value in os.environ.items() if name.startswith(FORWARDED)}
        return self.task.options(name=f"togi {job_id}", **resources).remote(str(data_dir), job_id, {**forwarded, **environment})

    def ended(self, reference: Any) -> Ended | None:
        ready, _ = self.ray.wait([reference], timeout=0)
        if not ready:
            return None
        try:
            return Ended(int(self.ray.get(reference)))
        except self.ray.exceptions.RayError as error:  # cancelled, or its node lost more often than the retries allow
            return Ended(-1, (str(error).strip().splitlines() or [type(error).__name__])[0])

    def stop(self, reference: Any) -> None:
        self.ray.cancel(reference, force=True)
        self.ray.wait([reference], timeout=30)

    def describe(self, reference: Any) -> dict[str, Any]:
        return {"ray_task": reference.task_id().hex()}

    def orphaned(self, job: dict[str, Any]) -> bool:
        return True  # a task belongs to the driver that submitted it, and Ray ended it when that server did


def _check_reachable(address: str) -> None:
    """Fail at once on a host:port where nothing listens (Ray itself would retry for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", or a form Ray checks itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise TogiError(f"--ray-address {address}: no Ray cluster answers there ({error.strerror or error})",
                        hint="start one with `ray start --head` and pass the address it prints, or `auto` on one of its nodes") from error


def open_executor(name: str, ray_address: str | None = None) -> Executor:
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(ray_address or "auto")
    raise TogiError(f"--executor {name}: not an executor", hint="use local (job processes on this machine) or ray (on a Ray cluster)")
