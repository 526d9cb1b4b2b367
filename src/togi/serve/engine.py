"""Continuous batching: one thread per base model decodes every active request together, a token a step.

Requests never wait on a lock. Each is a ``Sequence`` handed to the base model's engine through a bounded
queue (full: ``ServerBusy``, which the API answers with 429). The engine's thread is the only one that runs
the model. At every step it admits waiting sequences (their prompts run together, left-padded, and join the
batch's key-value cache), runs one forward pass for all active sequences, picks each one's next token with
its own sampling settings and random generator, and hands the token to the sequence's ``emit``. A sequence
ends at an end-of-turn token, at its token limit, or when its client cancels; it leaves the batch at once.

Which adapter a sequence runs with is part of the sequence: LoRA adapters (and the base, as ``__base__``)
share one batch through PEFT's mixed-adapter forward (``adapter_names``); adapters PEFT cannot mix (DoRA)
get a batch of their own, stepped in turn, with that adapter switched on only for its own forward pass.
Nothing one request does changes the adapter another runs with.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from togi.errors import TogiError

log = logging.getLogger("togi.serve")

MIXED = "__mixed__"  # the batch of the base and every adapter PEFT can mix in one forward pass


class ServerBusy(TogiError):
    """More requests are waiting for this model than its queue holds."""

    hint = "retry in a moment; the server takes more waiting requests with `togi serve --max-waiting N`"


@dataclass(eq=False)
class Sequence:
    """One answer being generated. ``emit(token_id, None)`` gets each new token; ``emit(None, reason)`` ends
    it with "stop" (an end-of-turn token), "length" (the token limit) or an error's message."""

    prompt_ids: list[int]
    max_tokens: int
    emit: Callable[[int | None, str | None], None]
    adapter: tuple[str, str] | None = None  # (served name, adapter directory); None: the base model
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    generated: int = 0
    generator: Any = None

    def cancel(self) -> None:
        """Stop generating: the sequence leaves its batch before the next forward pass."""
        self.cancelled.set()

    def send(self, token: int | None, reason: str | None) -> None:
        """Hand a token or the end to the reader; a reader that is gone (its event loop closed) cancels."""
        try:
            self.emit(token, reason)
        except Exception:
            self.cancelled.set()


class Batch:
    """The sequences decoded together, with their shared key-value cache. Rows are left-padded: ``mask`` is 0
    where a row has no token, and ``positions`` holds each row's next position id."""

    def __init__(self, lane: str) -> None:
        self.lane = lane
        self.rows: list[Sequence] = []
        self.cache: Any = None
        self.mask: Any = None
        self.positions: Any = None
        self.last: Any = None  # each row's newest token, the next forward pass's input


class BatchingEngine:
    def __init__(self, base: Any, max_batch: int = 32, max_waiting: int = 64) -> None:
        from transformers import DynamicCache

        self.base = base
        # a model whose cache is not one plain tensor per layer (sliding-window attention) decodes one request at a time
        self.max_batch = max_batch if _mergeable(DynamicCache(config=base.model.config)) else 1
        self.waiting: queue.Queue[Sequence] = queue.Queue(maxsize=max_waiting)
        self.batches: dict[str, Batch] = {}
        self.stop_ids = _stop_ids(base.model, base.tokenizer)
        self.pad_id = base.tokenizer.pad_token_id if base.tokenizer.pad_token_id is not None else min(self.stop_ids, default=0)
        self._thread = threading.Thread(target=self._run, name="togi-generate", daemon=True)
        self._thread.start()

    def submit(self, sequence: Sequence) -> None:
        if sequence.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        try:
            self.waiting.put_nowait(sequence)
        except queue.Full:
            raise ServerBusy(f"{self.waiting.maxsize} requests are already waiting for this model") from None

    # the engine's thread
    def _run(self) -> None:
        while True:
            try:
                self._cycle()
            except Exception as error:  # the thread must outlive any failure, or every later request would wait forever
                log.exception("the generation loop failed")
                for batch in self.batches.values():
                    for row in batch.rows:
                        row.send(None, f"generation failed: {error}")
                self.batches.clear()

    def _cycle(self) -> None:
        """Admit what waits (blocking while nothing runs), then one decoding step for every batch."""
        active = sum(len(batch.rows) for batch in self.batches.values())
        self._admit(self._take(block=active == 0, room=self.max_batch - active))
        for lane in list(self.batches):
            batch = self.batches[lane]
            self._drop_cancelled(batch)
            if batch.rows:
                self._guarded(batch, self._step)
            if not batch.rows:
                del self.batches[lane]

    def _take(self, block: bool, room: int) -> list[Sequence]:
        taken: list[Sequence] = []
        if block:
            taken.append(self.waiting.get())
        while len(taken) < max(room, 1 if block else 0):
            try:
                taken.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        return [sequence for sequence in taken if not sequence.cancelled.is_set()]

    def _admit(self, sequences: list[Sequence]) -> None:
        """Start the new sequences: those that share a batch have their prompts run in one forward pass."""
        import torch

        lanes: dict[str, list[Sequence]] = {}
        for sequence in sequences:
            try:
                lane = self._lane_of(sequence)
            except Exception as error:  # a broken adapter directory: this request fails, the engine goes on
                log.warning("could not load adapter %s: %s", sequence.adapter, error)
                sequence.send(None, f"the model's adapter could not be loaded: {error}")
                continue
            if sequence.seed is not None:
                sequence.generator = torch.Generator().manual_seed(sequence.seed)
            lanes.setdefault(lane, []).append(sequence)
        for lane, group in lanes.items():
            self._guarded(self.batches.setdefault(lane, Batch(lane)), lambda batch: self._prefill(batch, group), starting=group)

    def _guarded(self, batch: Batch, work: Callable[[Batch], None], starting: list[Sequence] | None = None) -> None:
        """Run one step of ``batch``; an error ends the batch's sequences (and those ``starting`` in it) with its
        message, never the engine."""
        try:
            work(batch)
        except Exception as error:
            log.exception("generation failed")
            for row in {id(row): row for row in [*batch.rows, *(starting or [])]}.values():
                row.send(None, f"generation failed: {error}")
            batch.rows, batch.cache = [], None

    def _lane_of(self, sequence: Sequence) -> str:
        """Load the sequence's adapter if it is new, and name the batch it can join."""
        from peft import PeftModel

        if sequence.adapter is None:
            return MIXED
        name, path = sequence.adapter
        model = self.base.model
        if not isinstance(model, PeftModel):
            self.base.model = model = PeftModel.from_pretrained(model, path, adapter_name=name).eval()
        elif name not in model.peft_config:
            model.load_adapter(path, adapter_name=name)
        config = model.peft_config[name]
        kind = getattr(getattr(config, "peft_type", None), "value", "unknown")
        if kind != "LORA":  # prompt and prefix tuning change the inputs and the cache, which this loop does not model
            raise ValueError(f"{name} is a {kind} adapter; the server answers with LoRA and DoRA adapters only")
        return name if getattr(config, "use_dora", False) else MIXED

    def _forward(self, batch: Batch, rows: list[Sequence], input_ids: Any, mask: Any, positions: Any, cache: Any) -> tuple[Any, Any]:
        import torch
        from peft import PeftModel

        model, extra = self.base.model, {}
        if isinstance(model, PeftModel):
            if batch.lane == MIXED:
                extra["adapter_names"] = [row.adapter[0] if row.adapter else "__base__" for row in rows]
            else:
                model.set_adapter(batch.lane)
        with torch.no_grad():
            output = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True,
                           logits_to_keep=1, **extra)  # the LM head only where the next token is read
        return output.logits[:, -1, :].float(), output.past_key_values

    def _prefill(self, batch: Batch, group: list[Sequence]) -> None:
        """Run the group's prompts together (left-padded) and add them to the batch with their first tokens."""
        import torch
        from transformers import DynamicCache

        device = self.base.model.device
        lengths = [len(sequence.prompt_ids) for sequence in group]
        width = max(lengths)
        input_ids = torch.full((len(group), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(group), width), dtype=torch.long, device=device)
        for row, sequence in enumerate(group):
            input_ids[row, width - lengths[row]:] = torch.tensor(sequence.prompt_ids, device=device)
            mask[row, width - lengths[row]:] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits, cache = self._forward(batch, group, input_ids, mask, positions, DynamicCache(config=self.base.model.config))
        new_positions, new_last = torch.tensor(lengths, device=device), torch.zeros(len(group), dtype=torch.long, device=device)
        if batch.rows:
            if not _mergeable(batch.cache) or not _mergeable(cache):
                raise RuntimeError("this model's cache cannot be batched")
            batch.cache, batch.mask = _merge(batch.cache, batch.mask, cache, mask)
            batch.positions, batch.last = torch.cat([batch.positions, new_positions]), torch.cat([batch.last, new_last])
        else:
            batch.cache, batch.mask, batch.positions, batch.last = cache, mask, new_positions, new_last
        batch.rows.extend(group)
        self._choose(batch, logits, rows=range(len(batch.rows) - len(group), len(batch.rows)))

    def _step(self, batch: Batch) -> None:
        import torch

        batch.mask = torch.cat([batch.mask, torch.ones((len(batch.rows), 1), dtype=torch.long, device=batch.mask.device)], dim=1)
        logits, batch.cache = self._forward(batch, batch.rows, batch.last.unsqueeze(1), batch.mask, batch.positions.unsqueeze(1), batch.cache)
        batch.positions = batch.positions + 1
        self._choose(batch, logits, rows=range(len(batch.rows)))

    def _choose(self, batch: Batch, logits: Any, rows: Any) -> None:
        """Each row's next token from its own logits row; finished rows leave the batch."""
        finished = []
        for logits_row, index in zip(logits, rows):
            sequence = batch.rows[index]
            token = _pick(logits_row, sequence)
            batch.last[index] = token
            if token in self.stop_ids:
                sequence.send(None, "stop")
                finished.append(index)
                continue
            sequence.generated += 1
            sequence.send(token, None)
            if sequence.generated >= sequence.max_tokens:
                sequence.send(None, "length")
                finished.append(index)
        if finished:
            _remove(batch, set(finished))

    def _drop_cancelled(self, batch: Batch) -> None:
        gone = {index for index, row in enumerate(batch.rows) if row.cancelled.is_set()}
        if gone:
            _remove(batch, gone)


def _pick(logits: Any, sequence: Sequence) -> int:
    import torch

    if sequence.temperature <= 0:
        return int(logits.argmax())
    probabilities = torch.softmax(logits / sequence.temperature, dim=-1)
    if sequence.top_p < 1.0:
        ordered, order = probabilities.sort(descending=True)
        outside = ordered.cumsum(-1) - ordered > sequence.top_p  # keep the smallest head whose mass reaches top_p
        ordered[outside] = 0.0
        probabilities = torch.zeros_like(probabilities).scatter(0, order, ordered)
    return int(torch.multinomial(probabilities, 1, generator=sequence.generator))


def _remove(batch: Batch, indices: set[int]) -> None:
    import torch

    keep = [index for index in range(len(batch.rows)) if index not in indices]
    batch.rows = [batch.rows[index] for index in keep]
    if not keep:
        batch.cache = batch.mask = batch.positions = batch.last = None
        return
    selected = torch.tensor(keep, device=batch.mask.device)
    batch.cache.batch_select_indices(selected)
    batch.mask, batch.positions, batch.last = batch.mask[selected], batch.positions[selected], batch.last[selected]
    trimmable = _mergeable(batch.cache)
    while trimmable and batch.mask.shape[1] > 1 and not bool(batch.mask[:, 0].any()):  # a column all remaining rows pad
        batch.mask = batch.mask[:, 1:]
        for layer in batch.cache.layers:
            layer.keys, layer.values = layer.keys[:, :, 1:], layer.values[:, :, 1:]


def _mergeable(cache: Any) -> bool:
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _merge(cache: Any, mask: Any, other: Any, other_mask: Any) -> tuple[Any, Any]:
    """One left-padded batch of two: pads the shorter side on the left (masked) and stacks the rows."""
    import torch

    width = max(mask.shape[1], other_mask.shape[1])

    def padded(tensor: Any, dim: int) -> Any:
        missing = width - tensor.shape[dim]
        if missing == 0:
            return tensor
        shape = list(tensor.shape)
        shape[dim] = missing
        return torch.cat([torch.zeros(shape, dtype=tensor.dtype, device=tensor.device), tensor], dim=dim)

    for layer, incoming in zip(cache.layers, other.layers):
        layer.keys = torch.cat([padded(layer.keys, 2), padded(incoming.keys, 2)])
        layer.values = torch.cat([padded(layer.values, 2), padded(incoming.values, 2)])
    return cache, torch.cat([padded(mask, 1), padded(other_mask, 1)])


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """The tokens that end an answer: the generation config's end tokens and the tokenizer's EOS."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
