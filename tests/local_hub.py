"""A loopback stand-in for the Hugging Face Hub's upload endpoints (this machine has no network).

It answers exactly the calls ``huggingface_hub``'s ``create_repo`` and ``upload_folder`` make: create
the repository, validate the model card's YAML, ask how each file should be uploaded (always as a
regular git blob here, so no LFS server is needed), and take the commit as NDJSON. Committed files are
written under ``root/<repo_id>/`` so a test can compare them with what was exported.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class LocalHub:
    def __init__(self, root: Path):
        self.root = root
        self.repos: dict[str, dict] = {}
        self.commits: list[dict] = []


def _handler(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _reply(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            body = self._body()
            if self.headers.get("Authorization") != "Bearer hf_local_test_token":
                return self._reply(401, {"error": "Invalid credentials"})
            path = self.path.split("?")[0]
            if path == "/api/repos/create":
                request = json.loads(body)
                repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
                hub.repos[repo_id] = {"visibility": request.get("visibility", "private" if request.get("private") else "public")}
                return self._reply(200, {"url": f"http://{self.headers['Host']}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if path.startswith("/api/models/") and "/preupload/" in path:
                files = json.loads(body)["files"]
                return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                   for f in files]})
            if path.startswith("/api/models/") and "/commit/" in path:
                repo_id = path[len("/api/models/"):].split("/commit/")[0]
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                header = next(line["value"] for line in lines if line["key"] == "header")
                for line in lines:
                    if line["key"] == "file":
                        target = hub.root / repo_id / line["value"]["path"]
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(line["value"]["content"]))
                hub.commits.append({"repo_id": repo_id, "summary": header.get("summary")})
                oid = f"{len(hub.commits):040x}"
                return self._reply(200, {"commitUrl": f"http://{self.headers['Host']}/{repo_id}/commit/{oid}",
                                         "commitOid": oid, "pullRequestUrl": None})
            return self._reply(404, {"error": f"not handled by the local hub: {path}"})

    return Handler


@contextlib.contextmanager
def local_hub(root: Path):
    hub = LocalHub(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hub
    finally:
        server.shutdown()
        server.server_close()
