"""A model to chat with: it streams an answer to a conversation, completes one (a ``ChatClient`` for the judge,
augmentation and preference data) and samples several.

Two backends: transformers (generation on a thread of its own, read as it streams, see ``streaming``) and
llama.cpp for a GGUF file when ``llama-cpp-python`` is installed. Generation stops at the EOS token or the
token that ends an assistant turn in the template. ``togi.export.chat.load_chat_model`` opens a run, a GGUF
file or a model as one, prompted with the template it was trained with.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from togi.models.streaming import Answer, Event, generate_on_thread, read_answer


@dataclass
class ChatSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


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

        tokenizer, stops = self._tokenizer, self._stop_ids()
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        sampling = {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p} if settings.temperature > 0 else {"do_sample": False}
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops or [0])[0]
        events: queue.Queue[Event] = queue.Queue()
        cancelled = threading.Event()
        torch.manual_seed(settings.seed)
        worker = generate_on_thread(self._model, prompt_ids, lambda token, reason: events.put((token, reason)), cancelled,
                                    max_new_tokens=settings.max_new_tokens, stop_ids=stops, pad_id=pad_id, sampling=sampling)
        try:
            for item in read_answer(Answer(tokenizer, None, len(prompt_ids)), events.get, cancelled.set):
                if isinstance(item, str):
                    yield item
        finally:
            # An answer can end (a stop string) or be closed before generate returns. Wait for it, cancelled, to stop after
            # its current token: a thread left inside torch when the interpreter exits aborts the process (`togi chat`).
            cancelled.set()
            worker.join()

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
