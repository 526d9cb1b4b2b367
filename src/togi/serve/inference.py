"""Chat completions for base models and fine-tuned ones, with LoRA adapters sharing one loaded base.

Each base model is loaded once, wrapped as a PEFT model the first time an adapter for it is needed, and
every fine-tuned model or checkpoint of that base is an adapter loaded into the same wrapper under its
own name. A request switches to its adapter (or disables adapters, for the base) while it holds the
base's lock, so requests to one base run one at a time and never see another's adapter.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from togi.data.template import chat_template_of


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


class LoadedBase:
    def __init__(self, reference: str) -> None:
        from togi.models.device import plan_device
        from togi.models.loading import load_causal_lm
        from togi.models.resolve import load_tokenizer, resolve_model

        self.tokenizer = load_tokenizer(reference)
        self.template, _ = chat_template_of(self.tokenizer)
        self.model = load_causal_lm(resolve_model(reference), plan_device("auto")).eval()
        self.adapters: set[str] = set()
        self.lock = threading.Lock()

    def use_adapter(self, name: str | None, path: str | None) -> None:
        """Called with the lock held: route the next generation through adapter ``name`` (None: the base)."""
        from peft import PeftModel

        if name is None:
            return
        if not isinstance(self.model, PeftModel):
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name).eval()
            self.adapters.add(name)
        elif name not in self.adapters:
            self.model.load_adapter(path, adapter_name=name)
            self.adapters.add(name)
        self.model.set_adapter(name)


class ModelPool:
    def __init__(self, base_models: dict[str, str]) -> None:
        self.base_models = base_models  # served name -> reference (the embedded name, a directory or a hub id in the cache)
        self._bases: dict[str, LoadedBase] = {}
        self._lock = threading.Lock()

    def base(self, name: str) -> LoadedBase:
        with self._lock:
            if name not in self._bases:
                self._bases[name] = LoadedBase(self.base_models[name])
            return self._bases[name]

    def stream(self, base_name: str, adapter: tuple[str, str] | None, request: CompletionRequest) -> Iterator[str | Completion]:
        """Pieces of the answer as they are generated, then the finished ``Completion``."""
        import torch

        from togi.serve.chat_model import TokenStreamer

        base = self.base(base_name)
        tokenizer = base.tokenizer
        prompt = tokenizer.apply_chat_template(request.messages, chat_template=base.template, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        streamer = TokenStreamer(tokenizer)
        sampling = ({"do_sample": True, "temperature": request.temperature, "top_p": request.top_p} if request.temperature > 0
                    else {"do_sample": False})
        generated: list[Any] = []
        failure: list[BaseException] = []
        halt = threading.Event()  # set when a stop sequence appears: generation ends at the next token

        def run() -> None:
            try:
                with torch.no_grad():
                    if adapter is None and hasattr(base.model, "disable_adapter"):
                        with base.model.disable_adapter():
                            generated.append(base.model.generate(**inputs, **arguments))
                    else:
                        generated.append(base.model.generate(**inputs, **arguments))
            except BaseException as error:
                failure.append(error)
                streamer.end()

        with base.lock:
            base.use_adapter(*(adapter or (None, None)))
            if request.seed is not None:
                torch.manual_seed(request.seed)
            arguments = dict(max_new_tokens=request.max_tokens, streamer=streamer, stopping_criteria=_halt_criteria(halt),
                             pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                             **sampling)
            worker = threading.Thread(target=run, daemon=True)
            worker.start()
            text, stopped = "", StopTrimmer(request.stop or [])
            for piece in streamer:
                visible, hit = stopped.feed(piece)
                if visible:
                    text += visible
                    yield visible
                if hit:
                    halt.set()
                    break
            worker.join()
            if not stopped.hit and stopped.pending:
                text += stopped.pending
                yield stopped.pending
        if failure:
            raise failure[0]
        new_tokens = int(generated[0].shape[1] - prompt_tokens) if generated else 0
        yield Completion(text, "stop" if stopped.hit or new_tokens < request.max_tokens else "length", prompt_tokens, new_tokens)


def _halt_criteria(halt: threading.Event) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class HaltWhenSet(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            import torch

            return torch.full((input_ids.shape[0],), halt.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([HaltWhenSet()])


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
