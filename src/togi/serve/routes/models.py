"""``/v1/models`` and ``/v1/chat/completions``: the base models and the caller's fine-tuned ones, and answers from them.

Chat completions run on the ``ModelPool`` (serve/inference.py): a fine-tuned model is its base with the job's
adapter. A request waits for its tokens on the event loop, holding no worker thread, so no number of slow or
dropped streams can starve the other routes.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from togi.serve.http import APIError, Organization, ServerState, State, owned, public
from togi.serve.inference import Completion, CompletionRequest, GenerationFailed, ServerBusy
from togi.serve.schema import ChatRequest, ContentPart
from togi.serve.store import new_id

router = APIRouter()


def base_model_record(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "togi"}


def served_model(state: ServerState, model_id: str) -> dict[str, Any] | None:
    """A model every organization sees: a base model, or an adapter given with ``togi serve --model`` (its record's
    ``internal`` part names its base and adapter folder, as a job's fine-tuned model's does)."""
    if model_id in state.base_models:
        return base_model_record(model_id)
    if model_id in state.adapter_models:
        base, adapter = state.adapter_models[model_id]
        return {**base_model_record(model_id), "internal": {"base": base, "adapter": adapter}}
    return None


def find_model(state: ServerState, model_id: str, org: str) -> dict[str, Any]:
    return served_model(state, model_id) or owned(state, "model", model_id, org, "model")


@router.get("/v1/models")
def list_models(state: State, org: Organization):
    tuned = [public(m) for m in state.store.list("model", org) if not m["internal"].get("checkpoint_of")]
    served = [base_model_record(name) for name in sorted(state.base_models)] + [base_model_record(name) for name in sorted(state.adapter_models)]
    return {"object": "list", "data": served + tuned}


@router.get("/v1/models/{model_id:path}")
def get_model(model_id: str, state: State, org: Organization):
    return public(find_model(state, model_id, org))


@router.delete("/v1/models/{model_id:path}")
def delete_model(model_id: str, state: State, org: Organization):
    if model_id in state.base_models or model_id in state.adapter_models:
        raise APIError(403, f"{model_id} is a model this server was started with and cannot be deleted", "permission_denied", "model")
    owned(state, "model", model_id, org, "model")
    state.store.delete("model", model_id)
    return {"id": model_id, "object": "model", "deleted": True}


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, state: State, org: Organization):
    model = served_model(state, body.model) or await run_in_threadpool(state.store.get, "model", body.model, org)
    if model is None:
        raise APIError(404, f"The model '{body.model}' does not exist", "model_not_found", "model")
    internal = model.get("internal")
    base_name = internal["base"] if internal else body.model
    adapter = None
    if internal:  # its adapter, fetched from the bucket the first time where another machine trained it
        adapter = (body.model, str(await run_in_threadpool(state.storage.materialize, state.data_dir / internal["adapter"])))
    messages = [{"role": m.role, "content": _text(m.content)} for m in body.messages]
    request = CompletionRequest(messages=messages, max_tokens=body.max_completion_tokens or body.max_tokens or 512,
                                temperature=1.0 if body.temperature is None else body.temperature,
                                top_p=1.0 if body.top_p is None else body.top_p,
                                stop=[body.stop] if isinstance(body.stop, str) else body.stop, seed=body.seed)
    completion_id, created = new_id("chatcmpl"), int(time.time())
    answers = [state.pool.astream(base_name, adapter, _seeded(request, index)) for index in range(body.n)]
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


def _text(content: str | list[ContentPart] | None) -> str:
    if isinstance(content, list):  # content parts: keep the text ones
        return "".join(part.text or "" for part in content if part.type == "text")
    return content or ""


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
