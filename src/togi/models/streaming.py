"""Streaming generation: tokens made on another thread, read as text as they arrive.

A generator thread (transformers' ``generate`` for a ``ChatModel``, the server's batching engine for
``togi serve``) hands each new token to ``emit(token_id, None)`` and ends the answer with
``emit(None, reason)``: "stop", "length", or an error's message. The reader's loop (``read_answer``, or
``aread_answer`` on an event loop) turns those events into text with an ``Answer`` (decoded as they come,
cut at the first stop sequence), then a ``Completion``; a reader that stops early cancels the generation.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from togi.errors import TogiError

Emit = Callable[[int | None, str | None], None]
Event = tuple[int | None, str | None]


class GenerationFailed(TogiError):
    """The model failed while answering (the generator's message)."""

    hint = "retry the request; if it fails again, the server's log says why"


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


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


class Answer:
    """Turns a generation's events into the text a reader sees: decoded as they come (a character whose UTF-8
    bytes are not all there yet waits), cut at the first stop sequence."""

    def __init__(self, tokenizer: Any, stops: list[str] | None, prompt_tokens: int) -> None:
        self.decoder, self.prompt_tokens = IncrementalDecoder(tokenizer), prompt_tokens
        self.text, self.finished = "", False
        self.trimmer = StopTrimmer(stops or [])

    def items(self, token: int | None, reason: str | None) -> list[str | Completion]:
        """What the reader gets for one event: new visible text, then the ``Completion`` once the answer has
        ended (``finished`` is then true). An end for another reason than "stop" or "length" raises ``GenerationFailed``."""
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


def read_answer(answer: Answer, next_event: Callable[[], Event], cancel: Callable[[], None]) -> Iterator[str | Completion]:
    """Pieces of the answer as its events arrive (``next_event`` blocks for the next), then the ``Completion``.
    Closing the iterator early cancels the generation."""
    try:
        while not answer.finished:
            yield from answer.items(*next_event())
    finally:
        cancel()


async def aread_answer(answer: Answer, next_event: Callable[[], Awaitable[Event]], cancel: Callable[[], None]) -> AsyncIterator[str | Completion]:
    """``read_answer`` on an event loop: waiting for the next event holds no thread."""
    try:
        while not answer.finished:
            for item in answer.items(*await next_event()):
                yield item
    finally:
        cancel()


def generate_on_thread(model: Any, prompt_ids: list[int], emit: Emit, cancelled: threading.Event, *, max_new_tokens: int,
                       stop_ids: list[int], pad_id: int, sampling: dict[str, Any]) -> threading.Thread:
    """Start transformers' ``generate`` for one prompt on a thread of its own: every new token goes to ``emit`` as it
    is made, then the end ("stop", "length" or the error's message). Setting ``cancelled`` ends it after the next token."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class TokenEmitter:
        """transformers' streamer interface (``put``, ``end``): generate first passes the prompt, then each new token."""

        def __init__(self) -> None:
            self.prompt_seen, self.count = False, 0

        def put(self, value: Any) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            for token in value.reshape(-1).tolist():
                self.count += 1
                emit(int(token), None)

        def end(self) -> None:
            pass

    class WhenCancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    streamer = TokenEmitter()

    def run() -> None:
        try:
            with torch.no_grad():
                output = model.generate(input_ids=torch.tensor([prompt_ids], device=model.device),
                                        attention_mask=torch.ones((1, len(prompt_ids)), dtype=torch.long, device=model.device),
                                        max_new_tokens=max_new_tokens, streamer=streamer, eos_token_id=stop_ids or None, pad_token_id=pad_id,
                                        stopping_criteria=StoppingCriteriaList([WhenCancelled()]), **sampling)
        except BaseException as error:  # the reader raises it as GenerationFailed
            emit(None, f"generation failed: {type(error).__name__}: {error}")
            return
        last = int(output[0, -1])
        emit(None, "length" if streamer.count >= max_new_tokens and last not in stop_ids else "stop")

    worker = threading.Thread(target=run, name="togi-generate-one", daemon=True)
    worker.start()
    return worker
