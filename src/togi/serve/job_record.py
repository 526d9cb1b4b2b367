"""A fine-tuning job as the server keeps it: OpenAI's job object plus ``internal``, the server's own bookkeeping.

A job is a JSON document: the API builds it, the store keeps it, the scheduler and the job process read and
update it, and the API shows it without ``internal``. The types below name its fields once, and pydantic
checks a job against them where it crosses into another module: when it is created and whenever it is read
from the store (``get_job``, ``list_jobs``, ``update_job``). They are ``TypedDict``s, not models, on purpose:
the document is the wire format itself, so what the client sees cannot drift from what is stored.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import TypeAdapter
from typing_extensions import NotRequired, TypedDict

from togi.serve.store import Store

JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
Auto = Literal["auto"]


class Hyperparameters(TypedDict):
    """"auto" until the training file has been validated, numbers from then on (``resolve_hyperparameters``)."""

    n_epochs: Union[int, Auto]
    batch_size: Union[int, Auto]
    learning_rate_multiplier: Union[float, Auto]
    beta: NotRequired[Union[float, Auto]]  # DPO jobs only


class JobError(TypedDict):
    code: str
    message: str
    param: Optional[str]


class JobPaths(TypedDict):
    """Where the job's files are on the server (the client knows them by their file ids)."""

    training_file: Optional[str]
    validation_file: Optional[str]


class JobInternal(TypedDict):
    model_reference: str  # what the base model is loaded from: the embedded name, a directory or a hub id
    paths: JobPaths
    fine_tuned_model: str  # the name the tuned model gets once the job succeeds
    n_examples: NotRequired[int]  # from the validated training file
    tokens_per_epoch: NotRequired[int]
    pid: NotRequired[Optional[int]]  # the job process, while the job runs
    reported_step: NotRequired[int]  # the last training step reported as an event, so a resumed job does not repeat it
    reported_eval_step: NotRequired[int]


class FineTuningJob(TypedDict):
    id: str
    object: Literal["fine_tuning.job"]
    created_at: int
    finished_at: Optional[int]
    model: str
    fine_tuned_model: Optional[str]
    organization_id: str
    status: JobStatus
    error: Optional[JobError]
    hyperparameters: Hyperparameters
    method: dict[str, Any]  # {"type": ..., "<type>": {"hyperparameters": ...}} as the client sent it, resolved
    result_files: list[str]
    trained_tokens: Optional[int]
    training_file: str
    validation_file: Optional[str]
    seed: int
    estimated_finish: Optional[int]
    integrations: list[Any]
    metadata: Optional[dict[str, str]]
    suffix: Optional[str]
    internal: JobInternal


_JOB = TypeAdapter(FineTuningJob)


def checked(record: dict[str, Any]) -> FineTuningJob:
    """``record`` itself, once it is known to be a job: a wrong or missing field raises ``pydantic.ValidationError``."""
    _JOB.validate_python(record)
    return record  # type: ignore[return-value]  # validated, and returned unchanged: the stored document is the wire format


def get_job(store: Store, job_id: str, organization: str | None = None) -> FineTuningJob | None:
    record = store.get("job", job_id, organization)
    return None if record is None else checked(record)


def list_jobs(store: Store, organization: str | None = None, status: JobStatus | None = None) -> list[FineTuningJob]:
    """Jobs newest first, optionally of one organization and in one status."""
    return [checked(record) for record in store.list("job", organization, where={"status": status} if status else None)]


def claim_job(store: Store, job_id: str, expected: dict[str, Any], **changes: Any) -> FineTuningJob | None:
    """Change fields of a job only if it still holds the ``expected`` values (None when another process changed it
    first): how one of several server replicas takes a job."""
    current = store.get("job", job_id)
    if current is None:
        return None
    checked({**current, **changes})
    record = store.claim("job", job_id, expected, **changes)
    return None if record is None else checked(record)


def update_job(store: Store, job_id: str, **changes: Any) -> FineTuningJob:
    """Change fields of a job; changes that would make it no job are refused before anything is written."""
    current = store.get("job", job_id)
    if current is None:
        raise KeyError(job_id)
    checked({**current, **changes})
    return checked(store.update("job", job_id, **changes))
