"""Evaluations the dashboard starts: `togi eval` of a job's fine-tuned model on a test file the caller uploaded.

Each evaluation runs ``togi eval`` in its own process (as a user would on the job's run directory), so a
crash cannot take the server down, and writes ``report.json`` and ``report.html`` into
``DATA_DIR/jobs/<job>/evaluations/<id>/``. Its record (kind ``evaluation``, child of the job) goes from
``running`` to ``succeeded`` with the metric table, or ``failed`` with what ``togi eval`` said, in the
client's terms (file ids, not the server's paths). A run a user evaluated by hand (``RUN/eval/report.json``)
is listed too, as evaluation ``run-eval``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from togi.serve.job_record import FineTuningJob
from togi.serve.jobs import job_directory, redact_paths
from togi.serve.storage import Storage
from togi.serve.store import Store, new_id

EVALUATION_TIMEOUT_SECONDS = 3600
RUN_EVALUATION_ID = "run-eval"  # the report `togi eval RUN` wrote into the job's run directory


def evaluation_directory(data_dir: Path, job_id: str, evaluation_id: str) -> Path:
    if evaluation_id == RUN_EVALUATION_ID:
        return job_directory(data_dir, job_id) / "run" / "eval"
    return job_directory(data_dir, job_id) / "evaluations" / evaluation_id


def metric_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """report.json's metrics as rows: name, tuned, baseline, delta and which direction is better."""
    tuned, baseline = report["tuned"]["metrics"], report["baseline"]["metrics"]
    return [{"name": name, "tuned": tuned[name], "baseline": baseline.get(name), "delta": report.get("deltas", {}).get(name),
             "higher_is_better": report.get("higher_is_better", {}).get(name, True)} for name in tuned]


def summary_of(report: dict[str, Any]) -> dict[str, Any]:
    return {"n_examples": report["n_examples"], "baseline": report["baseline"]["name"], "metrics": metric_table(report),
            "latency_seconds": {"tuned": report["tuned"]["latency_seconds"], "baseline": report["baseline"]["latency_seconds"]}}


def run_evaluation_record(data_dir: Path, job: FineTuningJob) -> dict[str, Any] | None:
    """The evaluation a user ran by hand on the job's run directory, when there is one."""
    path = evaluation_directory(data_dir, job["id"], RUN_EVALUATION_ID) / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        created = int(path.stat().st_mtime)
        return {"id": RUN_EVALUATION_ID, "object": "togi.evaluation", "job_id": job["id"], "model": job.get("fine_tuned_model"),
                "file_id": None, "data": Path(report.get("data", "")).name, "status": "succeeded", "created_at": created,
                "finished_at": created, "error": None, **summary_of(report)}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def start_evaluation(store: Store, data_dir: Path, job: FineTuningJob, file_record: dict[str, Any], data_path: Path,
                     label_pattern: str | None, limit: int | None, replica: str = "local", storage: Storage | None = None) -> dict[str, Any]:
    """Start ``togi eval`` in a thread of this replica; the record names the replica (and its data directory), so that
    only this replica fails it should it stop, and another can show the report (from the bucket, with ``storage``)."""
    evaluation_id = new_id("eval")
    record = {"id": evaluation_id, "object": "togi.evaluation", "job_id": job["id"], "model": job["fine_tuned_model"],
              "file_id": file_record["id"], "data": file_record["filename"], "label_pattern": label_pattern, "limit": limit,
              "status": "running", "created_at": int(time.time()), "finished_at": None, "error": None, "n_examples": None,
              "baseline": "base", "metrics": [], "internal": {"replica": replica, "data_dir": str(data_dir)}}
    store.put("evaluation", record, job["organization_id"], parent=job["id"])
    out_dir = evaluation_directory(data_dir, job["id"], evaluation_id)
    command = [sys.executable, "-m", "togi.cli.main", "eval", str(job_directory(data_dir, job["id"]) / "run"), "--data", str(data_path),
               "--out", str(out_dir), "--baseline", "base"]
    if label_pattern:
        command += ["--label-pattern", label_pattern]
    if limit:
        command += ["-n", str(limit)]
    worker = threading.Thread(target=_run, args=(store, data_dir, job, record, command, out_dir, data_path, file_record["id"],
                                                 storage or Storage(data_dir)), name=f"togi-{evaluation_id}", daemon=True)
    worker.start()
    return record


def _run(store: Store, data_dir: Path, job: FineTuningJob, record: dict[str, Any], command: list[str], out_dir: Path,
         data_path: Path, file_id: str, storage: Storage) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=EVALUATION_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        message = f"the evaluation took longer than {EVALUATION_TIMEOUT_SECONDS} s and was stopped"
    except OSError as error:
        message = f"togi eval could not be started: {error}"
    else:
        try:  # exit code 1 is a failed deploy gate: the report is written all the same
            report = json.loads((out_dir / "report.json").read_text(encoding="utf-8")) if done.returncode in (0, 1) else None
        except (OSError, ValueError):
            report = None
        if report is not None:
            storage.publish(out_dir)
            store.update("evaluation", record["id"], status="succeeded", finished_at=int(time.time()), **summary_of(report))
            return
        lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
        said = next((line for line in lines if line.startswith("togi: ")), lines[-1] if lines else f"exit code {done.returncode}")
        message = redact_paths(said.removeprefix("togi: ").replace(str(data_path), file_id), job, data_dir)
    store.update("evaluation", record["id"], status="failed", finished_at=int(time.time()),
                 error={"code": "evaluation_failed", "message": message, "param": None})


def fail_interrupted(store: Store, replica: str = "local") -> None:
    """Evaluations this replica left running when it stopped cannot finish: they fail with that reason. Another
    replica's are its own (records from before replicas were named have none, and count as this one's)."""
    for record in store.list("evaluation"):
        if record["status"] == "running" and record.get("internal", {}).get("replica", replica) == replica:
            store.update("evaluation", record["id"], status="failed", finished_at=int(time.time()),
                         error={"code": "evaluation_failed", "message": "the server stopped during the evaluation; start it again",
                                "param": None})
