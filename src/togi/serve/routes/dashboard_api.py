"""``/dashboard/api``: what the web dashboard needs beyond OpenAI's API, with the same keys and organizations.

- ``GET /dashboard/api/whoami``: the caller's organization (the page shows who is signed in);
- ``GET /dashboard/api/auto_hyperparameters?training_file=ID&model=NAME&method=supervised``: the file checked as
  the job will check it, and what OpenAI's "auto" values resolve to for it, before a job is created;
- ``/dashboard/api/jobs/{job}/evaluations``: list and start `togi eval` runs of a job's fine-tuned model on an
  uploaded test file, read one, and fetch its HTML report.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Literal, Optional

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from togi.data.labels import LabelPatternError, compile_label_pattern
from togi.serve.evaluations import RUN_EVALUATION_ID, evaluation_directory, run_evaluation_record, start_evaluation
from togi.serve.files import file_path
from togi.serve.http import APIError, Organization, State, owned, public
from togi.serve.jobs import job_directory, redact_paths, resolve_hyperparameters, validate_training_file
from togi.serve.routes.jobs import owned_job

router = APIRouter(prefix="/dashboard/api")


@router.get("/whoami")
def whoami(org: Organization):
    return {"organization": org}


@router.get("/auto_hyperparameters")
def auto_hyperparameters(training_file: str, model: str, state: State, org: Organization,
                         method: Literal["supervised", "dpo"] = "supervised"):
    """The file checked as the job will check it, and the "auto" values for its size: the form shows both
    before the job is created, so a bad file is named (line, field, hint) while the user is still on the form."""
    if model not in state.base_models:
        raise APIError(400, f"The model '{model}' does not exist here; available: {', '.join(sorted(state.base_models))}",
                       "model_not_found", "model")
    record = owned(state, "file", training_file, org, "file")
    path = state.local_file(record)
    error, size = validate_training_file(path, state.base_models[model], method)
    n_examples = size.get("n_examples", 0)
    return {"training_file": training_file, "model": model, "method": method, "n_examples": n_examples,
            "problem": error["message"].replace(str(path), record["filename"]) if error else None,
            "hyperparameters": resolve_hyperparameters({}, n_examples, method)}


class EvaluationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_id: str = Field(min_length=1)
    label_pattern: Optional[str] = Field(None, description="Regex whose first group is the label, for accuracy and macro-F1.")
    limit: Optional[int] = Field(None, ge=1, le=10_000, description="Evaluate only the first N examples.")

    @field_validator("label_pattern")
    @classmethod
    def _compiles(cls, value: Optional[str]) -> Optional[str]:
        try:
            compile_label_pattern(value)  # the same rule as `togi eval --label-pattern`
        except LabelPatternError as error:
            raise ValueError(f"{error} ({error.hint})") from None
        return value


@router.get("/jobs/{job_id}/evaluations")
def list_evaluations(job_id: str, state: State, org: Organization):
    job = owned_job(state, job_id, org)
    records = [public(record) for record in state.store.list("evaluation", org, parent=job_id)]
    by_hand = run_evaluation_record(state.data_dir, job)
    return {"object": "list", "data": records + ([by_hand] if by_hand else []), "has_more": False}


@router.post("/jobs/{job_id}/evaluations")
def create_evaluation(job_id: str, body: EvaluationRequest, state: State, org: Organization):
    job = owned_job(state, job_id, org)
    if job["status"] != "succeeded" or not job.get("fine_tuned_model"):
        raise APIError(400, f"only a succeeded job's model can be evaluated; this job is {job['status']}", "invalid_state", None)
    file_record = state.store.get("file", body.file_id, org)
    if file_record is None:
        raise APIError(400, f"invalid file_id: {body.file_id} does not exist", "invalid_request", "file_id")
    state.storage.materialize(job_directory(state.data_dir, job["id"]) / "run")  # trained on another machine
    record = start_evaluation(state.store, state.data_dir, job, file_record, state.local_file(file_record), body.label_pattern,
                              body.limit, replica=state.scheduler.replica, storage=state.storage)
    return public(record)


def _evaluation(state: State, job_id: str, evaluation_id: str, org: str) -> tuple[dict, dict]:
    """The caller's job and its evaluation; 404 for either that is not theirs."""
    job = owned_job(state, job_id, org)
    record = run_evaluation_record(state.data_dir, job) if evaluation_id == RUN_EVALUATION_ID else state.store.get("evaluation", evaluation_id, org)
    if record is None or record.get("job_id") != job_id:
        raise APIError(404, f"No such evaluation: {evaluation_id}", "evaluation_not_found", "id")
    return job, record


@router.get("/jobs/{job_id}/evaluations/{evaluation_id}")
def get_evaluation(job_id: str, evaluation_id: str, state: State, org: Organization):
    return public(_evaluation(state, job_id, evaluation_id, org)[1])


@router.get("/jobs/{job_id}/evaluations/{evaluation_id}/report", response_class=HTMLResponse)
def evaluation_report(job_id: str, evaluation_id: str, state: State, org: Organization):
    job, record = _evaluation(state, job_id, evaluation_id, org)
    path = state.storage.materialize(evaluation_directory(state.data_dir, job_id, evaluation_id) / "report.html")
    if not path.is_file():
        raise APIError(404, f"evaluation {evaluation_id} has no report yet", "report_not_found", "id")
    page = path.read_text(encoding="utf-8")
    evaluated_in = Path(record.get("internal", {}).get("data_dir") or state.data_dir)  # the replica that ran it may be another
    test_file = state.store.get("file", record.get("file_id") or "", org)
    for data_dir in dict.fromkeys([evaluated_in, state.data_dir]):  # the servers' paths become what the caller knows: the file's name, the job
        if test_file is not None:
            page = page.replace(str(file_path(data_dir, test_file)), html.escape(test_file["filename"]))
        page = redact_paths(page, job, data_dir)
    return HTMLResponse(page)
