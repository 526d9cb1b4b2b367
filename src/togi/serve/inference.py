"""Chat completions for base models and fine-tuned ones, with LoRA adapters sharing one loaded base.

Each base model is loaded once, and every fine-tuned model or checkpoint of it is an adapter loaded into
the same PEFT wrapper under its own name. Requests go to the base's ``BatchingEngine`` (serve/engine.py),
which decodes all of them together and runs each with its own adapter; no request holds a lock while it
waits for tokens, and a request whose reader stops (a dropped stream) is cancelled within one step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from togi.data.template import chat_template_of
from togi.errors import TogiError
from togi.serve.chat_model import IncrementalDecoder
from togi.serve.engine import BatchingEngine, Sequence, ServerBusy

__all__ = ["Completion", "CompletionRequest", "GenerationFailed", "ModelPool", "ServerBusy", "StopTrimmer"]


@dataclass
class CompletionRequest:
    messages: list[dict[str, str]]
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] | None = None
    seed: int | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


class GenerationFailed(TogiError):
    """The model failed while answering (the engine's message, for the client)."""

    hint = "retry the request; if it fails again, the server's log says why"


class LoadedBase:
    def __init__(self, reference: str) -> None:
        from togi.models.device import plan_device
        from togi.models.loading import load_causal_lm
        from togi.models.resolve import load_tokenizer, resolve_model

        self.tokenizer = load_tokenizer(reference)
        self.template, _ = chat_template_of(self.tokenizer)
        self.model = load_causal_lm(resolve_model(reference), plan_device("auto")).eval()

    @property
    def adapters(self) -> set[str]:
        return set(getattr(self.model, "peft_config", {}))

    def prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        prompt = self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]


class Answer:
    """Turns a sequence's tokens into the text a client sees: decoded as they come (a character whose UTF-8
    bytes are not all there yet waits), cut at the first stop sequence."""

    def __init__(self, tokenizer: Any, request: CompletionRequest, prompt_tokens: int) -> None:
        self.decoder, self.prompt_tokens = IncrementalDecoder(tokenizer), prompt_tokens
        self.text, self.finished = "", False
        self.trimmer = StopTrimmer(request.stop or [])

    def items(self, token: int | None, reason: str | None) -> list[str | Completion]:
        """What the reader gets for one event of the engine: new visible text, then the ``Completion`` once the
        answer has ended (``finished`` is then true)."""
        if token is not None:
            new = self.decoder.add([token])
            visible, hit = self.trimmer.feed(new) if new else ("", False)
            self.text += visible
            return [piece for piece in (visible, self._done("stop") if hit else None) if piece]
        if reason not in ("stop", "length"):
            raise GenerationFailed(reason or "generation failed")
        tail = self.trimmer.pending
        self.text += tail
        return [piece for piece in (tail, self._done(reason)) if piece]

    def _done(self, reason: str) -> Completion:
        self.finished = True
        return Completion(self.text, reason, self.prompt_tokens, len(self.decoder.tokens))


class ModelPool:
    def __init__(self, base_models: dict[str, str], max_batch: int = 32, max_waiting: int = 64) -> None:
        self.base_models = base_models  # served name -> reference (the embedded name, a directory or a hub id in the cache)
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self._bases: dict[str, LoadedBase] = {}
        self._engines: dict[str, BatchingEngine] = {}
        self._lock = threading.Lock()

    def base(self, name: str) -> LoadedBase:
        self.engine(name)
        return self._bases[name]

    def engine(self, name: str) -> BatchingEngine:
        with self._lock:
            if name not in self._engines:
                self._bases[name] = LoadedBase(self.base_models[name])
                self._engines[name] = BatchingEngine(self._bases[name], self.max_batch, self.max_waiting)
            return self._engines[name]

    def start(self, base_name: str, adapter: tuple[str, str] | None, request: CompletionRequest,
              emit: Callable[[int | None, str | None], None]) -> tuple[Sequence, Answer]:
        """Queue one answer; its tokens go to ``emit`` from the engine's thread. Raises ``ServerBusy``."""
        engine = self.engine(base_name)
        prompt_ids = engine.base.prompt_ids(request.messages)
        sequence = Sequence(prompt_ids, request.max_tokens, emit, adapter, request.temperature, request.top_p, request.seed)
        engine.submit(sequence)
        return sequence, Answer(engine.base.tokenizer, request, len(prompt_ids))

    def stream(self, base_name: str, adapter: tuple[str, str] | None, request: CompletionRequest) -> Iterator[str | Completion]:
        """Pieces of the answer as they are generated, then the finished ``Completion``. Closing the
        iterator early cancels the generation."""
        events: queue.Queue[tuple[int | None, str | None]] = queue.Queue()
        sequence, answer = self.start(base_name, adapter, request, lambda token, reason: events.put((token, reason)))
        try:
            while not answer.finished:
                yield from answer.items(*events.get())
        finally:
            sequence.cancel()

    async def astream(self, base_name: str, adapter: tuple[str, str] | None, request: CompletionRequest) -> AsyncIterator[str | Completion]:
        """``stream`` for the event loop: waiting for tokens holds no thread, and a reader that goes away
        (the client dropped the connection) cancels the generation."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[int | None, str | None]] = asyncio.Queue()

        def emit(token: int | None, reason: str | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (token, reason))

        # loading a base model and tokenizing take a while: not on the event loop
        sequence, answer = await asyncio.to_thread(self.start, base_name, adapter, request, emit)
        try:
            while not answer.finished:
                for item in answer.items(*await events.get()):
                    yield item
        finally:
            sequence.cancel()


class StopTrimmer:
    """Holds back text that may be the start of a stop sequence, and cuts the answer where one appears."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [stop for stop in stops if stop]
        self.pending = ""
        self.hit = False

    def feed(self, piece: str) -> tuple[str, bool]:
        self.pending += piece
        for stop in self.stops:
            at = self.pending.find(stop)
            if at >= 0:
                self.hit = True
                visible, self.pending = self.pending[:at], ""
                return visible, True
        keep = max((len(stop) - 1 for stop in self.stops), default=0)
        keep = next((n for n in range(min(keep, len(self.pending)), 0, -1)
                     if any(stop.startswith(self.pending[-n:]) for stop in self.stops)), 0)
        visible, self.pending = self.pending[: len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return visible, False
