"""``/v1/fine_tuning/jobs``: create jobs, list and read them, cancel, pause and resume them, and their events and checkpoints.

Only what can be checked at once is checked here (the files exist and are the caller's, the hyper-parameters
are in range); the scheduler validates the training file's content and fails the job if it must.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, Optional

from fastapi import APIRouter

from togi.config import MAX_LEARNING_RATE, MIN_LEARNING_RATE
from togi.serve.files import file_path
from togi.serve.http import APIError, Organization, PageLimit, ServerState, State, owned, page, public
from togi.serve.job_record import FineTuningJob, checked
from togi.serve.jobs import BASE_LEARNING_RATE, DPO_LEARNING_RATE, TERMINAL, add_event, fine_tuned_model_name
from togi.serve.schema import JobRequest
from togi.serve.store import new_id

router = APIRouter()


def _check_learning_rate(method: dict[str, Any]) -> None:
    """The learning rate a multiplier gives must be one training accepts: refused now, not as a failed job later."""
    hyper = (method.get(method["type"]) or {}).get("hyperparameters") or {}
    multiplier = hyper.get("learning_rate_multiplier", "auto")
    if multiplier == "auto":
        return
    base = DPO_LEARNING_RATE if method["type"] == "dpo" else BASE_LEARNING_RATE
    if not MIN_LEARNING_RATE <= base * multiplier <= MAX_LEARNING_RATE:
        raise APIError(400, f"learning_rate_multiplier {multiplier:g} gives a learning rate of {base * multiplier:g} (togi's {base:g} times it), "
                       f"outside the range training accepts, [{MIN_LEARNING_RATE:g}, {MAX_LEARNING_RATE:g}]: use a multiplier between "
                       f"{MIN_LEARNING_RATE / base:g} and {MAX_LEARNING_RATE / base:g}", "invalid_value",
                       f"method.{method['type']}.hyperparameters.learning_rate_multiplier")


def owned_job(state: ServerState, job_id: str, org: str) -> FineTuningJob:
    return checked(owned(state, "job", job_id, org, "job"))


@router.post("/v1/fine_tuning/jobs")
def create_job(body: JobRequest, state: State, org: Organization):
    if body.model not in state.base_models:
        raise APIError(400, f"The model '{body.model}' does not exist or cannot be fine-tuned here; "
                       f"available: {', '.join(sorted(state.base_models))}", "model_not_found", "model")
    paths = {}
    for param in ("training_file", "validation_file"):
        file_id = getattr(body, param)
        record = state.store.get("file", file_id, org) if file_id is not None else None
        if file_id is not None and record is None:
            raise APIError(400, f"invalid {param}: {file_id} does not exist", "invalid_request", param)
        paths[param] = file_path(Path(), record).as_posix() if record else None  # relative: each machine has its own data directory
    method = body.resolved_method()
    method_type = method["type"]
    requested = dict((method.get(method_type) or {}).get("hyperparameters") or {})
    _check_learning_rate(method)
    if body.processes > state.scheduler.slots:
        raise APIError(400, f"processes {body.processes} is more than this server's {state.scheduler.slots} worker slot(s), so the job "
                       "could never start; ask for fewer, or start togi serve with --workers as many", "invalid_request", "processes")
    if body.processes > 1 and method_type != "supervised":
        raise APIError(400, f"processes {body.processes}: only supervised jobs train on several processes", "invalid_request", "processes")
    job_id = new_id("ftjob")
    job = {"id": job_id, "object": "fine_tuning.job", "created_at": int(time.time()), "finished_at": None, "model": body.model,
           "fine_tuned_model": None, "organization_id": org, "status": "validating_files", "error": None,
           "hyperparameters": {"n_epochs": requested.get("n_epochs", "auto"), "batch_size": requested.get("batch_size", "auto"),
                               "learning_rate_multiplier": requested.get("learning_rate_multiplier", "auto"),
                               **({"beta": requested.get("beta", "auto")} if method_type == "dpo" else {})},
           "method": method, "result_files": [], "trained_tokens": None, "training_file": body.training_file,
           "validation_file": body.validation_file, "seed": body.seed if body.seed is not None else secrets.randbelow(2**31),
           "estimated_finish": None, "integrations": body.integrations or [], "metadata": body.metadata, "suffix": body.suffix,
           "internal": {"model_reference": state.base_models[body.model], "paths": paths, "processes": body.processes,
                        "fine_tuned_model": fine_tuned_model_name(body.model, org, body.suffix, job_id)}}
    if method_type not in ("supervised", "dpo"):
        job.update(status="failed", finished_at=int(time.time()),
                   error={"code": "unsupported_method", "param": "method.type",
                          "message": f"method.type {method_type!r} is not supported by this togi server; use 'supervised' or 'dpo'"})
    job = checked(job)
    state.store.put("job", job, org)
    add_event(state.store, job, "Created fine-tuning job" if job["status"] != "failed" else job["error"]["message"],
              level="info" if job["status"] != "failed" else "error")
    return public(job)


@router.get("/v1/fine_tuning/jobs")
def list_jobs(state: State, org: Organization, after: Optional[str] = None, limit: PageLimit = 20):
    return page(state.store.list("job", org), after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}")
def get_job(job_id: str, state: State, org: Organization):
    return public(owned_job(state, job_id, org))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(job_id: str, state: State, org: Organization):
    job = owned_job(state, job_id, org)
    if job["status"] in TERMINAL:
        raise APIError(400, f"the job is already {job['status']} and cannot be cancelled", "invalid_state", None)
    return public(state.scheduler.cancel(job))


@router.post("/v1/fine_tuning/jobs/{job_id}/pause")
def pause_job(job_id: str, state: State, org: Organization):
    job = owned_job(state, job_id, org)
    if job["status"] not in ("running", "queued"):
        raise APIError(400, f"only a running or queued job can be paused; this one is {job['status']}", "invalid_state", None)
    return public(state.scheduler.pause(job))


@router.post("/v1/fine_tuning/jobs/{job_id}/resume")
def resume_job(job_id: str, state: State, org: Organization):
    job = owned_job(state, job_id, org)
    if job["status"] != "paused":
        raise APIError(400, f"only a paused job can be resumed; this one is {job['status']}", "invalid_state", None)
    return public(state.scheduler.resume(job))


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
def job_events(job_id: str, state: State, org: Organization, after: Optional[str] = None, limit: PageLimit = 20):
    owned(state, "job", job_id, org, "job")
    return page(state.store.list("event", org, parent=job_id), after, limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
def job_checkpoints(job_id: str, state: State, org: Organization, after: Optional[str] = None, limit: PageLimit = 10):
    owned(state, "job", job_id, org, "job")
    return page(state.store.list("checkpoint", org, parent=job_id), after, limit, ends=True)
