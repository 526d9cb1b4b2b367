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
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from dataclasses import dataclass

from togi.data.template import chat_template_of
from togi.models.streaming import Answer, Completion, Emit, Event, GenerationFailed, StopTrimmer, aread_answer, read_answer
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
              emit: Emit) -> tuple[Sequence, Answer]:
        """Queue one answer; its tokens go to ``emit`` from the engine's thread. Raises ``ServerBusy``."""
        engine = self.engine(base_name)
        prompt_ids = engine.base.prompt_ids(request.messages)
        sequence = Sequence(prompt_ids, request.max_tokens, emit, adapter, request.temperature, request.top_p, request.seed)
        engine.submit(sequence)
        return sequence, Answer(engine.base.tokenizer, request.stop, len(prompt_ids))

    def stream(self, base_name: str, adapter: tuple[str, str] | None, request: CompletionRequest) -> Iterator[str | Completion]:
        """Pieces of the answer as they are generated, then the finished ``Completion``. Closing the
        iterator early cancels the generation."""
        events: queue.Queue[Event] = queue.Queue()
        sequence, answer = self.start(base_name, adapter, request, lambda token, reason: events.put((token, reason)))
        yield from read_answer(answer, events.get, sequence.cancel)

    async def astream(self, base_name: str, adapter: tuple[str, str] | None, request: CompletionRequest) -> AsyncIterator[str | Completion]:
        """``stream`` for the event loop: waiting for tokens holds no thread, and a reader that goes away
        (the client dropped the connection) cancels the generation."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()

        def emit(token: int | None, reason: str | None) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (token, reason))

        # loading a base model and tokenizing take a while: not on the event loop
        sequence, answer = await asyncio.to_thread(self.start, base_name, adapter, request, emit)
        async with aclosing(aread_answer(answer, events.get, sequence.cancel)) as items:
            async for item in items:
                yield item

