"""A fine-tuning job has one typed shape (serve/job_record.py), checked wherever it is read from or written to the store."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from togi.serve.job_record import get_job, list_jobs, update_job
from togi.serve.store import SQLiteStore


def new_job(job_id: str = "ftjob-1") -> dict:
    return {"id": job_id, "object": "fine_tuning.job", "created_at": 1700000000, "finished_at": None, "model": "tiny",
            "fine_tuned_model": None, "organization_id": "acme", "status": "validating_files", "error": None,
            "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {}}}, "result_files": [], "trained_tokens": None,
            "training_file": "file-1", "validation_file": None, "seed": 7, "estimated_finish": None, "integrations": [],
            "metadata": None, "suffix": None,
            "internal": {"model_reference": "/models/tiny", "paths": {"training_file": "/data/files/file-1.jsonl", "validation_file": None},
                         "fine_tuned_model": "ft:tiny:acme::1"}}


@pytest.fixture
def store(tmp_path):
    return SQLiteStore(tmp_path / "togi.db")


def test_a_job_reads_back_exactly_as_it_was_stored(store):
    store.put("job", new_job(), "acme")
    assert get_job(store, "ftjob-1") == new_job()
    assert get_job(store, "ftjob-1", "another-org") is None
    resolved = {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0}
    job = update_job(store, "ftjob-1", status="queued", hyperparameters=resolved, internal={**new_job()["internal"], "n_examples": 12})
    assert job["hyperparameters"] == resolved and [job["id"] for job in list_jobs(store, "acme", status="queued")] == ["ftjob-1"]


def test_a_change_that_would_make_it_no_job_is_refused_before_it_is_written(store):
    store.put("job", new_job(), "acme")
    with pytest.raises(ValidationError, match="status"):
        update_job(store, "ftjob-1", status="done")
    with pytest.raises(ValidationError, match="n_epochs"):
        update_job(store, "ftjob-1", hyperparameters={"n_epochs": "three", "batch_size": 1, "learning_rate_multiplier": 1.0})
    assert get_job(store, "ftjob-1") == new_job()


def test_a_stored_record_that_is_not_a_job_is_refused_when_read(store):
    broken = new_job()
    del broken["internal"]["paths"]
    store.put("job", broken, "acme")
    with pytest.raises(ValidationError, match="paths"):
        get_job(store, "ftjob-1")
