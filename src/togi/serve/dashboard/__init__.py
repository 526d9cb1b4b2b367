"""The web dashboard `togi serve` shows at ``/``: jobs, live curves, evaluations and a playground.

It is one static page (``static/index.html``, ``app.js``, ``style.css``) that signs in with an API key and
then uses the same routes as any client: OpenAI's under ``/v1`` and togi's few extras under ``/dashboard/api``.
So the page sees exactly what the key's organization may see, and nothing is rendered on the server with
someone's data in it. The curves use uPlot (MIT, vendored under ``static/vendor``); nothing comes from a CDN,
so the page works offline. ``togi serve --no-ui`` leaves it out.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

# The page runs only its own scripts; the evaluation report is shown in a sandboxed frame (srcdoc, no scripts).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
                           "connect-src 'self'; frame-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'none'")
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}


def mount_dashboard(app: FastAPI) -> None:
    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)

    app.mount("/ui", StaticFiles(directory=STATIC), name="dashboard-static")
