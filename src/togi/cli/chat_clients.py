"""Turning ``--url/--model`` style flags into a ``ChatClient``: an OpenAI-compatible endpoint, or a local
model (a run directory, a model directory or name, a .gguf file), shared by `togi eval` and `togi data`."""

from __future__ import annotations

from typing import Any

from togi.cli.common import errors, fail
from togi.models.chat_client import OpenAICompatibleClient, api_key_from_env

JUDGE_KEY_VARIABLES = ("TOGI_JUDGE_API_KEY", "OPENAI_API_KEY")


def local_chat_model(reference: str, *, role: str) -> Any:
    """A ``ChatModel`` (it streams, completes and samples) for a run, a model or a GGUF file."""
    from togi.export.chat import load_chat_model

    with errors.status(f"loading {role} {reference} ..."):
        return load_chat_model(reference, prefer_llama_cpp=True)


def chat_client_from_flags(url: str | None, model: str | None, *, role: str, flags: tuple[str, str],
                           key_variables: tuple[str, ...]) -> tuple[Any, str]:
    """(client, name for reports) for the endpoint at ``url`` serving ``model``, or the local ``model``; (None, "")
    when neither is given. ``flags`` are the option names as the user typed them, for the error messages."""
    url_flag, model_flag = flags
    if url:
        if not model:
            raise fail(f"{url_flag} needs {model_flag}", f"name the model the endpoint should use, e.g. {model_flag} gpt-4o-mini")
        client = OpenAICompatibleClient(url, model, api_key=api_key_from_env(*key_variables), role=role)
        return client, client.name
    if not model:
        return None, ""
    return local_chat_model(model, role=role), model
