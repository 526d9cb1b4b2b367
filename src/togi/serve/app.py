"""The OpenAI-compatible HTTP API: files, fine-tuning jobs, models and chat completions under /v1.

Every request needs ``Authorization: Bearer <key>``; the key names an organization, and every file, job
and model belongs to one, so another organization's ids answer 404. Every error, including a malformed
request body, is OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` with OpenAI's
status codes (400 for a bad body, not FastAPI's 422). The wire contract is ../shared/openai-api.md.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from togi.serve.files import FileTooLarge, file_path, store_stream
from togi.serve.inference import Completion, CompletionRequest, GenerationFailed, ModelPool, ServerBusy
from togi.config import MAX_LEARNING_RATE, MIN_LEARNING_RATE
from togi.serve.jobs import BASE_LEARNING_RATE, DPO_LEARNING_RATE, TERMINAL, add_event, fine_tuned_model_name
from togi.serve.schema import ChatRequest, ContentPart, JobRequest
from togi.serve.scheduler import Scheduler
from togi.serve.store import SQLiteStore, Store, new_id

DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024
FILE_PURPOSES = ("fine-tune", "fine-tune-results", "batch", "batch_output", "assistants", "assistants_output", "vision",
                 "user_data", "evals")
PageLimit = Annotated[int, Query(ge=1, le=100)]  # OpenAI's bounds for list pages
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error", 404: "invalid_request_error",
               405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error", 429: "requests", 500: "server_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _envelope(status: int, message: str, code: str | None = None, param: str | None = None) -> JSONResponse:
    def printable(text: str | None) -> str | None:  # a lone surrogate from a request cannot be encoded as UTF-8: shown escaped
        return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")

    return JSONResponse({"error": {"message": printable(message), "type": ERROR_TYPES.get(status, "invalid_request_error"),
                                   "param": printable(param), "code": code}}, status_code=status)


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


UNION_MEMBER = re.compile(r"[\[\]()<>-]|^(str|int|float|bool|dict|list|none)$")


def _param(location: Any) -> str | None:
    """A validation error's field as a dotted path (``method.supervised.hyperparameters.n_epochs``): without the
    request part it came from and without the union member pydantic tried (``str``, ``list[str]``)."""
    parts = [str(part) for part in location if part not in ("body", "query", "path") and not UNION_MEMBER.search(str(part))]
    return ".".join(parts) or None


def _text(content: str | list[ContentPart] | None) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(part.text or "" for part in content if part.type == "text")
    return content or ""


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


def create_app(data_dir: Path, base_models: dict[str, str], slots: int = 1, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
               store: Store | None = None, max_batch: int = 32, max_waiting: int = 64) -> FastAPI:
    data_dir = data_dir.resolve()
    store = store or SQLiteStore(data_dir / "togi.db")
    scheduler = Scheduler(store, data_dir, slots=slots)
    pool = ModelPool(base_models, max_batch=max_batch, max_waiting=max_waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="togi", version="1", description="OpenAI-compatible fine-tuning API", lifespan=lifespan)
    app.state.store, app.state.scheduler, app.state.pool = store, scheduler, pool

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return _envelope(error.status, error.message, error.code, error.param)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        if first.get("type") == "json_invalid":  # its location is a character offset, not a field
            detail = (first.get("ctx") or {}).get("error", "")
            return _envelope(400, f"the request body is not valid JSON ({detail}, at character {first['loc'][-1]})", "invalid_json", None)
        param = _param(first.get("loc", []))
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        return _envelope(400, f"invalid request: {param or 'body'}: {message}", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _envelope(error.status_code, str(error.detail), None)

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        return _envelope(500, f"the server failed: {type(error).__name__}: {error}", "server_error")

    def organization(request: Request) -> str:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else ""
        org = store.organization_of_key(key) if key else None
        if org is None:
            raise APIError(401, "Incorrect API key provided. Create one with `togi serve keys create --org NAME`."
                           if key else "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.", "invalid_api_key")
        return org

    def owned(kind: str, record_id: str, org: str, name: str) -> dict[str, Any]:
        record = store.get(kind, record_id, org)
        if record is None:
            raise APIError(404, f"No such {name}: {record_id}", f"{name.replace(' ', '_')}_not_found", "id")
        return record

    # files
    @app.post("/v1/files")
    def upload_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...), org: str = Depends(organization)):
        if purpose not in FILE_PURPOSES:
            raise APIError(400, f"invalid purpose {purpose!r}; expected one of {', '.join(FILE_PURPOSES)}", "invalid_value", "purpose")
        try:
            return public(store_stream(store, data_dir, org, file.filename, purpose, file.file, max_file_bytes))
        except FileTooLarge as error:
            raise APIError(413, str(error), "file_too_large", "file") from None

    @app.get("/v1/files")
    def list_files(purpose: Optional[str] = None, limit: Annotated[int, Query(ge=1, le=10000)] = 10000, order: Literal["asc", "desc"] = "desc",
                   after: Optional[str] = None,
                   org: str = Depends(organization)):
        records = store.list("file", org, where={"purpose": purpose} if purpose else None)
        return page(records if order == "desc" else records[::-1], after, limit, ends=True)

    @app.get("/v1/files/{file_id}")
    def get_file(file_id: str, org: str = Depends(organization)):
        return public(owned("file", file_id, org, "file"))

    @app.get("/v1/files/{file_id}/content")
    def file_content(file_id: str, org: str = Depends(organization)):
        record = owned("file", file_id, org, "file")
        return Response(file_path(data_dir, record).read_bytes(), media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    def delete_file(file_id: str, org: str = Depends(organization)):
        record = owned("file", file_id, org, "file")
        users = [job["id"] for job in store.list("job", org) if job["status"] not in TERMINAL
                 and file_id in (job.get("training_file"), job.get("validation_file"))]
        if users:
            raise APIError(409, f"{file_id} is used by {', '.join(users)}, which has not finished: cancel it first, or delete the "
                           "file once it has ended", "file_in_use", "file_id")
        store.delete("file", file_id)
        file_path(data_dir, record).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    # fine-tuning jobs
    @app.post("/v1/fine_tuning/jobs")
    def create_job(body: JobRequest, org: str = Depends(organization)):
        if body.model not in base_models:
            raise APIError(400, f"The model '{body.model}' does not exist or cannot be fine-tuned here; "
                           f"available: {', '.join(sorted(base_models))}", "model_not_found", "model")
        paths = {}
        for param in ("training_file", "validation_file"):
            file_id = getattr(body, param)
            record = store.get("file", file_id, org) if file_id is not None else None
            if file_id is not None and record is None:
                raise APIError(400, f"invalid {param}: {file_id} does not exist", "invalid_request", param)
            paths[param] = str(file_path(data_dir, record)) if record else None
        method = body.resolved_method()
        method_type = method["type"]
        requested = dict((method.get(method_type) or {}).get("hyperparameters") or {})
        _check_learning_rate(method)
        job_id = new_id("ftjob")
        job = {"id": job_id, "object": "fine_tuning.job", "created_at": int(time.time()), "finished_at": None, "model": body.model,
               "fine_tuned_model": None, "organization_id": org, "status": "validating_files", "error": None,
               "hyperparameters": {"n_epochs": requested.get("n_epochs", "auto"), "batch_size": requested.get("batch_size", "auto"),
                                   "learning_rate_multiplier": requested.get("learning_rate_multiplier", "auto"),
                                   **({"beta": requested.get("beta", "auto")} if method_type == "dpo" else {})},
               "method": method, "result_files": [], "trained_tokens": None, "training_file": body.training_file,
               "validation_file": body.validation_file, "seed": body.seed if body.seed is not None else secrets.randbelow(2**31),
               "estimated_finish": None, "integrations": body.integrations or [], "metadata": body.metadata, "suffix": body.suffix,
               "internal": {"model_reference": base_models[body.model], "paths": paths,
                            "fine_tuned_model": fine_tuned_model_name(body.model, org, body.suffix, job_id)}}
        if method_type not in ("supervised", "dpo"):
            job.update(status="failed", finished_at=int(time.time()),
                       error={"code": "unsupported_method", "param": "method.type",
                              "message": f"method.type {method_type!r} is not supported by this togi server; use 'supervised' or 'dpo'"})
        store.put("job", job, org)
        add_event(store, job, "Created fine-tuning job" if job["status"] != "failed" else job["error"]["message"],
                  level="info" if job["status"] != "failed" else "error")
        return public(job)

    @app.get("/v1/fine_tuning/jobs")
    def list_jobs(after: Optional[str] = None, limit: PageLimit = 20, org: str = Depends(organization)):
        return page(store.list("job", org), after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    def get_job(job_id: str, org: str = Depends(organization)):
        return public(owned("job", job_id, org, "job"))

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    def cancel_job(job_id: str, org: str = Depends(organization)):
        job = owned("job", job_id, org, "job")
        if job["status"] in TERMINAL:
            raise APIError(400, f"the job is already {job['status']} and cannot be cancelled", "invalid_state", None)
        return public(scheduler.cancel(job))

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    def pause_job(job_id: str, org: str = Depends(organization)):
        job = owned("job", job_id, org, "job")
        if job["status"] not in ("running", "queued"):
            raise APIError(400, f"only a running or queued job can be paused; this one is {job['status']}", "invalid_state", None)
        return public(scheduler.pause(job))

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    def resume_job(job_id: str, org: str = Depends(organization)):
        job = owned("job", job_id, org, "job")
        if job["status"] != "paused":
            raise APIError(400, f"only a paused job can be resumed; this one is {job['status']}", "invalid_state", None)
        return public(scheduler.resume(job))

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    def job_events(job_id: str, after: Optional[str] = None, limit: PageLimit = 20, org: str = Depends(organization)):
        owned("job", job_id, org, "job")
        return page(store.list("event", org, parent=job_id), after, limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    def job_checkpoints(job_id: str, after: Optional[str] = None, limit: PageLimit = 10, org: str = Depends(organization)):
        owned("job", job_id, org, "job")
        return page(store.list("checkpoint", org, parent=job_id), after, limit, ends=True)

    # models
    def base_model_record(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "togi"}

    def find_model(model_id: str, org: str) -> dict[str, Any]:
        if model_id in base_models:
            return base_model_record(model_id)
        return owned("model", model_id, org, "model")

    @app.get("/v1/models")
    def list_models(org: str = Depends(organization)):
        tuned = [public(m) for m in store.list("model", org) if not m["internal"].get("checkpoint_of")]
        return {"object": "list", "data": [base_model_record(name) for name in sorted(base_models)] + tuned}

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str, org: str = Depends(organization)):
        return public(find_model(model_id, org))

    @app.delete("/v1/models/{model_id:path}")
    def delete_model(model_id: str, org: str = Depends(organization)):
        if model_id in base_models:
            raise APIError(403, f"{model_id} is a base model of this server and cannot be deleted", "permission_denied", "model")
        owned("model", model_id, org, "model")
        store.delete("model", model_id)
        return {"id": model_id, "object": "model", "deleted": True}

    # chat completions
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, org: str = Depends(organization)):
        # async: a request waiting for its tokens holds no worker thread, so no number of slow or dropped
        # streams can starve the other routes
        model = base_model_record(body.model) if body.model in base_models else await run_in_threadpool(store.get, "model", body.model, org)
        if model is None:
            raise APIError(404, f"The model '{body.model}' does not exist", "model_not_found", "model")
        internal = model.get("internal")
        base_name = internal["base"] if internal else body.model
        adapter = (body.model, internal["adapter"]) if internal else None
        messages = [{"role": m.role, "content": _text(m.content)} for m in body.messages]
        request = CompletionRequest(messages=messages, max_tokens=body.max_completion_tokens or body.max_tokens or 512,
                                    temperature=1.0 if body.temperature is None else body.temperature,
                                    top_p=1.0 if body.top_p is None else body.top_p,
                                    stop=[body.stop] if isinstance(body.stop, str) else body.stop, seed=body.seed)
        completion_id, created = new_id("chatcmpl"), int(time.time())
        answers = [pool.astream(base_name, adapter, _seeded(request, index)) for index in range(body.n)]
        firsts = [await _first(answer) for answer in answers]  # queued (or refused with 429) before the response starts
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_sse(answers, firsts, body.model, completion_id, created, include_usage), media_type="text/event-stream")
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for index, (answer, first) in enumerate(zip(answers, firsts)):
            result = first if isinstance(first, Completion) else [item async for item in answer][-1]
            assert isinstance(result, Completion)
            choices.append({"index": index, "message": {"role": "assistant", "content": result.text}, "finish_reason": result.finish_reason,
                            "logprobs": None})
            prompt_tokens, completion_tokens = result.prompt_tokens, completion_tokens + result.completion_tokens
        return {"id": completion_id, "object": "chat.completion", "created": created, "model": body.model, "choices": choices,
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    return app


def _seeded(request: CompletionRequest, index: int) -> CompletionRequest:
    if request.seed is None or index == 0:
        return request
    return CompletionRequest(**{**request.__dict__, "seed": request.seed + index})


async def _first(answer: AsyncIterator[str | Completion]) -> str | Completion:
    """An answer's first piece: by then its request is queued, or refused (429) or failed before any byte is sent."""
    try:
        return await answer.__anext__()
    except ServerBusy as busy:
        raise APIError(429, f"The server is busy: {busy}. Retry in a moment.", "rate_limit_exceeded") from None
    except GenerationFailed as failure:
        raise APIError(500, str(failure), "server_error") from None


async def _sse(answers: list[AsyncIterator[str | Completion]], firsts: list[str | Completion], model: str, completion_id: str, created: int,
               include_usage: bool) -> AsyncIterator[str]:
    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
        if include_usage:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def pieces(answer: AsyncIterator[str | Completion], first: str | Completion) -> AsyncIterator[str | Completion]:
        yield first
        if not isinstance(first, Completion):
            async for item in answer:
                yield item

    prompt_tokens, completion_tokens = 0, 0
    try:
        for index, (answer, first) in enumerate(zip(answers, firsts)):
            yield chunk([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
            try:
                async for item in pieces(answer, first):
                    if isinstance(item, Completion):
                        prompt_tokens, completion_tokens = item.prompt_tokens, completion_tokens + item.completion_tokens
                        yield chunk([{"index": index, "delta": {}, "finish_reason": item.finish_reason}])
                    else:
                        yield chunk([{"index": index, "delta": {"content": item}, "finish_reason": None}])
            except GenerationFailed as failure:  # the status line has gone out: the error goes in the stream
                yield f"data: {json.dumps({'error': {'message': str(failure), 'type': 'server_error', 'param': None, 'code': 'server_error'}})}\n\n"
                return
        if include_usage:
            yield chunk([], {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens})
        yield "data: [DONE]\n\n"
    finally:  # the client went away, or the answers ended: nothing goes on generating
        for answer in answers:
            await answer.aclose()
