"""The OpenAI-compatible HTTP API: files, fine-tuning jobs, models and chat completions under /v1.

Every request needs ``Authorization: Bearer <key>``; the key names an organization, and every file, job
and model belongs to one, so another organization's ids answer 404. Every error, including a malformed
request body, is OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}`` with OpenAI's
status codes (400 for a bad body, not FastAPI's 422). The wire contract is ../shared/openai-api.md.

The web dashboard (``dashboard/``) is served at ``/`` unless ``ui=False``; it signs in with an API key and uses
these same routes, plus the few extras in ``routes/dashboard_api.py``.

The routes are in ``routes/`` (one router per resource); what they share (the server's state, the caller's
organization, the error envelope, list pages) is in ``http.py``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from togi.serve.http import ServerState, install_error_handlers
from togi.serve.inference import ModelPool
from togi.serve.dashboard import mount_dashboard
from togi.serve.evaluations import fail_interrupted
from togi.serve.executors import Executor
from togi.serve.routes import dashboard_api, files, jobs, models
from togi.serve.scheduler import Scheduler
from togi.serve.database import open_store
from togi.serve.storage import Storage
from togi.serve.store import Store

DEFAULT_MAX_FILE_BYTES = 512 * 1024 * 1024


def create_app(data_dir: Path, base_models: dict[str, str], slots: int = 1, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
               store: Store | None = None, max_batch: int = 32, max_waiting: int = 64, ui: bool = True,
               adapters: dict[str, tuple[str, str]] | None = None, replica: str = "local", executor: Executor | None = None,
               storage: Storage | None = None) -> FastAPI:
    """The server. ``replica`` names this one among several that share ``store`` (PostgreSQL): see ``scheduler.py``."""
    data_dir = data_dir.resolve()
    store = store or open_store(None, data_dir)
    storage = storage or Storage(data_dir)
    state = ServerState(data_dir=data_dir, base_models=base_models, store=store,
                        scheduler=Scheduler(store, data_dir, slots=slots, replica=replica, executor=executor, storage=storage),
                        pool=ModelPool(base_models, max_batch=max_batch, max_waiting=max_waiting), max_file_bytes=max_file_bytes,
                        adapter_models=dict(adapters or {}), storage=storage)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.scheduler.start()
        fail_interrupted(state.store, replica)
        yield
        state.scheduler.stop()

    app = FastAPI(title="togi", version="1", description="OpenAI-compatible fine-tuning API", lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)
    for router in (files.router, jobs.router, models.router, dashboard_api.router):
        app.include_router(router)
    if ui:
        mount_dashboard(app)
    return app
