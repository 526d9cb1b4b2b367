"""``/v1/files``: upload, list, read and delete files (training data, and the results files jobs write)."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from togi.serve.files import FileTooLarge, file_path, store_stream
from togi.serve.http import APIError, Organization, State, owned, page, public
from togi.serve.job_record import list_jobs
from togi.serve.jobs import TERMINAL

FILE_PURPOSES = ("fine-tune", "fine-tune-results", "batch", "batch_output", "assistants", "assistants_output", "vision",
                 "user_data", "evals")

router = APIRouter()


@router.post("/v1/files")
def upload_file(state: State, org: Organization, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]):
    if purpose not in FILE_PURPOSES:
        raise APIError(400, f"invalid purpose {purpose!r}; expected one of {', '.join(FILE_PURPOSES)}", "invalid_value", "purpose")
    try:
        return public(store_stream(state.store, state.data_dir, org, file.filename, purpose, file.file, state.max_file_bytes,
                                   storage=state.storage))
    except FileTooLarge as error:
        raise APIError(413, str(error), "file_too_large", "file") from None


@router.get("/v1/files")
def list_files(state: State, org: Organization, purpose: Optional[str] = None, limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
               order: Literal["asc", "desc"] = "desc", after: Optional[str] = None):
    records = state.store.list("file", org, where={"purpose": purpose} if purpose else None)
    return page(records if order == "desc" else records[::-1], after, limit, ends=True)


@router.get("/v1/files/{file_id}")
def get_file(file_id: str, state: State, org: Organization):
    return public(owned(state, "file", file_id, org, "file"))


@router.get("/v1/files/{file_id}/content")
def file_content(file_id: str, state: State, org: Organization):
    record = owned(state, "file", file_id, org, "file")
    path = file_path(state.data_dir, record)
    if path.is_file():
        return FileResponse(path, media_type="application/octet-stream")
    return StreamingResponse(state.storage.chunks(path), media_type="application/octet-stream")  # from the bucket, in chunks


@router.delete("/v1/files/{file_id}")
def delete_file(file_id: str, state: State, org: Organization):
    record = owned(state, "file", file_id, org, "file")
    users = [job["id"] for job in list_jobs(state.store, org) if job["status"] not in TERMINAL
             and file_id in (job.get("training_file"), job.get("validation_file"))]
    if users:
        raise APIError(409, f"{file_id} is used by {', '.join(users)}, which has not finished: cancel it first, or delete the "
                       "file once it has ended", "file_in_use", "file_id")
    state.store.delete("file", file_id)
    state.storage.delete(file_path(state.data_dir, record))
    return {"id": file_id, "object": "file", "deleted": True}
