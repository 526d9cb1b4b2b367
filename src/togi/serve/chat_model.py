"""Streaming chat with a run, a saved model or a GGUF file, prompted with the template it was trained with.

- A run directory: the tuned model (LoRA merged), the training chat template from run.json, and by
  default the system prompt every training example shared.
- A model directory or name: the model with its tokenizer's template.
- A GGUF file: llama.cpp when it is installed, else transformers (``gguf_file=``), with the template
  the file carries.
Answers stream token by token; generation stops at the EOS token or the token that ends an assistant
turn in the template.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from togi.data.template import chat_template_of
from togi.runs import Run


@dataclass
class ChatSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


class IncrementalDecoder:
    """Text of tokens as they arrive: each call returns only the new text, holding back a character whose
    UTF-8 bytes are not all there yet."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.sent = 0

    def add(self, tokens: list[int]) -> str:
        self.tokens.extend(tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        complete = len(text.rstrip("\ufffd"))
        new = text[self.sent:complete] if complete > self.sent else ""
        self.sent = max(self.sent, complete)
        return new


class TokenStreamer:
    """Hands generated text to another thread as each token arrives.

    transformers' TextIteratorStreamer waits for a space before it lets text go, except after Chinese
    characters, so Japanese answers (kana, no spaces) would arrive all at once. This one passes on the
    new text of every token (``IncrementalDecoder``)."""

    def __init__(self, tokenizer: Any) -> None:
        import queue

        self.decoder = IncrementalDecoder(tokenizer)
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.prompt_seen = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() first passes the prompt
            self.prompt_seen = True
            return
        if text := self.decoder.add([int(token) for token in value.reshape(-1).tolist()]):
            self.queue.put(text)

    def end(self) -> None:
        self.queue.put(None)

    def __iter__(self) -> Iterator[str]:
        while (piece := self.queue.get()) is not None:
            yield piece


@dataclass
class ChatModel:
    """Something that streams an answer to a conversation."""

    name: str
    template: str
    system: str | None
    stop_token: str | None
    backend: str  # "transformers" or "llama.cpp"
    _model: Any = field(repr=False, default=None)
    _tokenizer: Any = field(repr=False, default=None)

    def prompt(self, messages: list[dict[str, str]]) -> str:
        return self._tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False, add_generation_prompt=True)

    def stream(self, messages: list[dict[str, str]], settings: ChatSettings) -> Iterator[str]:
        """The answer in pieces as they are generated."""
        if self.backend == "llama.cpp":
            yield from self._stream_llama_cpp(self.prompt(messages), settings)
        else:
            yield from self._stream_transformers(self.prompt(messages), settings)

    def _stream_transformers(self, prompt: str, settings: ChatSettings) -> Iterator[str]:
        import torch

        tokenizer, model = self._tokenizer, self._model
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        streamer = TokenStreamer(tokenizer)
        stops = self._stop_ids()
        sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} if settings.temperature > 0 else {"do_sample": False}
        torch.manual_seed(settings.seed)
        arguments = dict(**inputs, max_new_tokens=settings.max_new_tokens, streamer=streamer, eos_token_id=stops or None,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0], **sampling)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                with torch.no_grad():
                    model.generate(**arguments)
            except BaseException as error:  # surfaced in the caller's thread below
                failure.append(error)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from (piece for piece in streamer if piece)
        worker.join()
        if failure:
            raise failure[0]

    def complete(self, messages: list[dict[str, str]], *, temperature: float = 0.0, max_tokens: int = 256) -> str:
        """The whole answer at once: this makes a local model a ``ChatClient`` (a judge, an augmenter)."""
        return "".join(self.stream(messages, ChatSettings(max_new_tokens=max_tokens, temperature=temperature))).strip()

    def sample(self, messages: list[dict[str, str]], n: int, settings: ChatSettings) -> list[str]:
        """``n`` answers to one conversation, sampled with ``settings``; the same seed gives the same answers."""
        from togi.models.generation import sample_answers

        if self.backend == "llama.cpp":
            return ["".join(self._stream_llama_cpp(self.prompt(messages), replace(settings, seed=settings.seed + i))).strip() for i in range(n)]
        return sample_answers(self._model, self._tokenizer, self.prompt(messages), n=n, temperature=settings.temperature, top_p=settings.top_p,
                              max_new_tokens=settings.max_new_tokens, seed=settings.seed, stop_ids=self._stop_ids())

    def _stop_ids(self) -> list[int]:
        tokenizer = self._tokenizer
        return [token_id for token_id in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(self.stop_token or "")) if token_id is not None
                and token_id != tokenizer.unk_token_id]

    def _stream_llama_cpp(self, prompt: str, settings: ChatSettings) -> Iterator[str]:
        chunks = self._model.create_completion(prompt, max_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                               top_p=settings.top_p, top_k=1 if settings.temperature == 0 else 40, seed=settings.seed,
                                               stop=[self.stop_token] if self.stop_token else None, stream=True)
        for chunk in chunks:
            text = chunk["choices"][0]["text"]
            if text:
                yield text

    def close(self) -> None:
        if self.backend == "llama.cpp" and self._model is not None:
            self._model.close()


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
