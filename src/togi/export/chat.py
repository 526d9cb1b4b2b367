"""Chat with a run, a saved model or a GGUF file, prompted with the template it was trained with.

- A run directory: the tuned model (LoRA merged), the training chat template from run.json, and by
  default the system prompt every training example shared.
- A model directory or name: the model with its tokenizer's template.
- A GGUF file: llama.cpp when it is installed, else transformers (``gguf_file=``), with the template
  the file carries, and the SYSTEM of an Ollama Modelfile made from it.
This sits with the exports because it reads what they and the run record (the training template, the
token that ends a turn, the Modelfile); the model it returns is a ``togi.models.chat_model.ChatModel``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from togi.data.template import chat_template_of
from togi.models.chat_model import ChatModel
from togi.runs import Run


def load_chat_model(reference: str, prefer_llama_cpp: bool = True) -> ChatModel:
    path = Path(reference)
    if path.suffix == ".gguf":
        return _load_gguf(path, prefer_llama_cpp)
    if Run.is_run(path):
        return _load_run(path)
    from togi.models.device import plan_device
    from togi.models.loading import load_causal_lm
    from togi.models.resolve import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(reference)
    template, _ = chat_template_of(tokenizer)
    model = load_causal_lm(resolve_model(reference), plan_device("auto"))
    return ChatModel(path.name or reference, template, None, _end_of_turn(tokenizer, template), "transformers", model.eval(), tokenizer)


def _end_of_turn(tokenizer: Any, template: str) -> str | None:
    from togi.export.chat_format import ChatFormat, ChatFormatError

    try:
        return ChatFormat.from_template(tokenizer, template).end_of_turn.strip() or tokenizer.eos_token
    except ChatFormatError:
        return tokenizer.eos_token


def _load_run(run_dir: Path) -> ChatModel:
    from togi.export.consistency import TrainingChat
    from togi.export.merge import tuned_model
    from togi.export.ollama import constant_system_prompt

    model, tokenizer = tuned_model(run_dir)
    training = TrainingChat.of_run(run_dir, tokenizer)
    return ChatModel(run_dir.name, training.template, constant_system_prompt(run_dir), training.end_of_turn, "transformers",
                     model.eval(), tokenizer)


def _load_gguf(path: Path, prefer_llama_cpp: bool) -> ChatModel:
    from transformers import AutoTokenizer

    from togi.export import llama_cpp

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    template, _ = chat_template_of(tokenizer)
    stop = _end_of_turn(tokenizer, template)
    system = _modelfile_system(path)
    if prefer_llama_cpp and llama_cpp.available():
        from llama_cpp import Llama

        return ChatModel(path.name, template, system, stop, "llama.cpp", Llama(model_path=str(path), n_ctx=4096, verbose=False), tokenizer)
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return ChatModel(path.name, template, system, stop, "transformers", model.eval(), tokenizer)


def _modelfile_system(path: Path) -> str | None:
    """The SYSTEM of a Modelfile beside the GGUF that is made FROM it, as Ollama would use it."""
    from togi.export.ollama import parse_modelfile

    modelfile = path.parent / "Modelfile"
    if not modelfile.is_file():
        return None
    instructions = parse_modelfile(modelfile.read_text(encoding="utf-8"))
    return instructions.get("SYSTEM") if instructions.get("FROM") in (f"./{path.name}", path.name, str(path)) else None
