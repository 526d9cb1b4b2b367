"""Chat completions from a model behind an OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, togi serve, ...).

The LLM judge, preference-data generation and data augmentation all only need "messages in, text out":
``ChatClient.complete``. This module is the HTTP side; a local model answers the same call through
``togi.models.chat_model.ChatModel.complete``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Protocol

from togi.errors import TogiError


class ChatClientError(TogiError):
    """The model could not be asked: unreachable, an HTTP error, or a reply in another format."""

    hint = "point the URL at an OpenAI-compatible endpoint: its base URL, ending in /v1"


class ChatClient(Protocol):
    def complete(self, messages: list[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 256) -> str: ...


def api_key_from_env(*names: str) -> str | None:
    """The first of the environment variables ``names`` that is set, e.g. TOGI_JUDGE_API_KEY then OPENAI_API_KEY."""
    return next((os.environ[name] for name in names if os.environ.get(name)), None)


class OpenAICompatibleClient:
    """``POST {base_url}/chat/completions`` with a bearer key; ``role`` names the model in errors ("the judge")."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 120.0, role: str = "the model") -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.role = role

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url.removesuffix('/chat/completions')}"

    def complete(self, messages: list[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 256) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as error:
            raise ChatClientError(f"{self.role} at {self.url} answered HTTP {error.code}: {error.read()[:300]!r}",
                                  "check the model name and the API key the endpoint expects (see --help for its variable)") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
            raise ChatClientError(f"cannot reach {self.role} at {self.url}: {getattr(error, 'reason', error)}",
                                  "start the server, or check the URL") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ChatClientError(f"{self.role} at {self.url} did not answer with JSON") from None
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ChatClientError(f"{self.role} at {self.url} did not answer in the chat-completions format: {str(reply)[:300]}") from None
