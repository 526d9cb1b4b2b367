"""Sample answers from the base and the tuned model, side by side, at the end of a run.

The prompts are held-out examples (the validation set when there is one), rendered with the same chat
template as in training; decoding is greedy so that the comparison is repeatable. For adapter methods
the base model's answers come from the same weights with the adapter switched off.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from togi.data.examples import ChatExample
from togi.data.template import render_chat
from togi.data.writer import atomic_write_text
from togi.models.generation import answer_budget, generate_answers

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Sample:
    prompt: str
    reference: str
    base: str
    tuned: str


def sample_generations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[ChatExample],
    *,
    load_base: Callable[[], PreTrainedModel] | None = None,
    max_new_tokens: int = 128,
) -> list[Sample]:
    """``load_base`` gives the untuned model for methods that changed the weights themselves."""
    prompts = [render_chat(tokenizer, example.prompt_messages, example.tools, add_generation_prompt=True) for example in examples]
    references = [example.final_answer for example in examples]
    budget = answer_budget(tokenizer, references, cap=max_new_tokens)

    def answer(generator: Any) -> list[str]:
        return [generation.text for generation in generate_answers(generator, tokenizer, prompts, max_new_tokens=budget)]

    tuned = answer(model)
    if load_base is None:
        with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
            base = answer(model)
    else:
        base = answer(load_base().to(model.device))
    user_texts = [example.prompt_messages[-1].content for example in examples]
    return [Sample(prompt=p, reference=r, base=b, tuned=t) for p, r, b, t in zip(user_texts, references, base, tuned)]


def save_samples(samples: list[Sample], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(asdict(sample), ensure_ascii=False) + "\n" for sample in samples))


def render_samples(console: Any, samples: list[Sample]) -> None:
    from rich.table import Table

    table = Table(title="sample answers: base vs tuned (greedy)", show_lines=True, title_justify="left")
    for column, ratio in (("prompt", 3), ("reference", 2), ("base model", 2), ("tuned model", 2)):
        table.add_column(column, ratio=ratio, overflow="fold")
    for sample in samples:
        prompt = sample.prompt if len(sample.prompt) <= 120 else sample.prompt[:117] + "..."
        table.add_row(prompt, sample.reference, sample.base or "(empty)", sample.tuned or "(empty)")
    console.print(table)
