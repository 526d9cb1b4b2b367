"""A small OpenAI-compatible chat server for tests: a real model answering over real HTTP.

Run as ``python tiny_chat_server.py MODEL_DIR [LOG]``; it prints the port it listens on (127.0.0.1 only),
then serves ``POST /v1/chat/completions`` with greedy generation until it is terminated. With LOG, each
request's messages and the reply are appended to that JSONL file, so tests can see what was asked.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from transformers import AutoModelForCausalLM, AutoTokenizer

from togi.models.generation import generate_answers

model_dir = sys.argv[1]
log_path = sys.argv[2] if len(sys.argv) > 2 else None
tokenizer = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)


class ChatCompletions(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (the name http.server calls)
        if self.path != "/v1/chat/completions":
            self.send_error(404)
            return
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = tokenizer.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
        answer = generate_answers(model, tokenizer, [prompt], max_new_tokens=min(int(request.get("max_tokens", 128)), 128))[0]
        if log_path:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps({"messages": request["messages"], "reply": answer.text}, ensure_ascii=False) + "\n")
        body = json.dumps({"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()), "model": request["model"],
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text}, "finish_reason": "stop"}],
                           "usage": {"completion_tokens": answer.new_tokens}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), ChatCompletions)
print(server.server_address[1], flush=True)
server.serve_forever()
