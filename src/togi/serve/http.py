"""What the API's routers share: the server's state, the caller's organization, OpenAI's error envelope and list pages.

Every error, including a malformed request body, is OpenAI's envelope ``{"error": {"message", "type", "param",
"code"}}`` with OpenAI's status codes (400 for a bad body, not FastAPI's 422): ``install_error_handlers``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from togi.serve.files import file_path
from togi.serve.inference import ModelPool
from togi.serve.scheduler import Scheduler
from togi.serve.storage import Storage, StorageUnavailable
from togi.serve.store import Store

PageLimit = Annotated[int, Query(ge=1, le=100)]  # OpenAI's bounds for list pages
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
               405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error", 429: "requests", 500: "server_error",
               503: "server_error"}


@dataclass
class ServerState:
    """What the routers work with, one per app (``app.state.server``)."""

    data_dir: Path
    base_models: dict[str, str]  # served name -> reference (the embedded name, a directory or a hub id in the cache)
    store: Store
    scheduler: Scheduler
    pool: ModelPool
    max_file_bytes: int
    storage: Storage  # the data directory, or a bucket mirroring it
    adapter_models: dict[str, tuple[str, str]] = field(default_factory=dict)  # served name -> (its base's name, adapter folder)

    def local_file(self, record: dict) -> Path:
        """A file record's content on this machine's disk (fetched from the bucket where another machine stored it)."""
        return self.storage.materialize(file_path(self.data_dir, record))


def server_state(request: Request) -> ServerState:
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def organization(request: Request, state: State) -> str:
    """The organization the request's API key belongs to; 401 without a known key."""
    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else ""
    org = state.store.organization_of_key(key) if key else None
    if org is None:
        raise APIError(401, "Incorrect API key provided. Create one with `togi serve keys create --org NAME`."
                       if key else "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", "invalid_api_key")
    return org


Organization = Annotated[str, Depends(organization)]


def owned(state: ServerState, kind: str, record_id: str, org: str, name: str) -> dict[str, Any]:
    """The record of ``org`` with that id; 404 when there is none (another organization's ids included)."""
    record = state.store.get(kind, record_id, org)
    if record is None:
        raise APIError(404, f"No such {name}: {record_id}", f"{name.replace(' ', '_')}_not_found", "id")
    return record


def public(record: dict[str, Any]) -> dict[str, Any]:
    """A record as the API shows it: without the server's own bookkeeping."""
    return {key: value for key, value in record.items() if key != "internal"}


def page(records: list[dict[str, Any]], after: str | None, limit: int, ends: bool = False) -> dict[str, Any]:
    if after is not None:
        ids = [record["id"] for record in records]
        records = records[ids.index(after) + 1:] if after in ids else []
    chosen = [public(record) for record in records[:limit]]
    result: dict[str, Any] = {"object": "list", "data": chosen, "has_more": len(records) > limit}
    if ends:
        result.update(first_id=chosen[0]["id"] if chosen else None, last_id=chosen[-1]["id"] if chosen else None)
    return result


def envelope(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    def printable(text: str | None) -> str | None:  # a lone surrogate from a request cannot be encoded as UTF-8: shown escaped
        return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")

    return JSONResponse({"error": {"message": printable(message), "type": ERROR_TYPES.get(status, "invalid_request_error"),
                                   "param": printable(param), "code": code}}, status_code=status)


UNION_MEMBER = re.compile(r"[\[\]()<>-]|^(str|int|float|bool|dict|list|none)$")


def _param(location: Any) -> str | None:
    """A validation error's field as a dotted path (``method.supervised.hyperparameters.n_epochs``): without the
    request part it came from and without the union member pydantic tried (``str``, ``list[str]``)."""
    parts = [str(part) for part in location if part not in ("body", "query", "path") and not UNION_MEMBER.search(str(part))]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return envelope(error.status, error.message, error.code, error.param)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        if first.get("type") == "json_invalid":  # its location is a character offset, not a field
            detail = (first.get("ctx") or {}).get("error", "")
            return envelope(400, f"the request body is not valid JSON ({detail}, at character {first['loc'][-1]})", "invalid_json", None)
        param = _param(first.get("loc", []))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return envelope(400, f"invalid request: {param or 'body'}: {message}", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return envelope(error.status_code, str(error.detail), None)

    @app.exception_handler(StorageUnavailable)
    async def storage_unavailable(request: Request, error: StorageUnavailable) -> JSONResponse:
        return envelope(503, f"{error.message}; {error.hint}", "storage_unavailable")

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        return envelope(500, f"the server failed: {type(error).__name__}: {error}", "server_error")
