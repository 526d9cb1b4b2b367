"""Generation for rendered chat prompts: batched greedy answers, timed (training samples, evaluation), and
several sampled answers to one prompt (preference-data generation)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generation:
    text: str
    new_tokens: int
    seconds: float  # wall time of the batch the prompt was answered in: the time a caller waited


def generate_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
) -> list[Generation]:
    """Greedy answers to already-rendered prompts (left-padded batches, so every row ends at its prompt)."""
    tokenizer.padding_side = "left"
    model.eval()
    answers: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        began = time.perf_counter()
        with torch.no_grad():
            output = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        seconds = time.perf_counter() - began
        for row in output[:, batch["input_ids"].shape[1]:]:
            tokens = [token for token in row.tolist() if token != tokenizer.pad_token_id]
            answers.append(Generation(text=_answer_text(tokenizer, tokens), new_tokens=len(tokens), seconds=seconds))
    return answers


def _answer_text(tokenizer: PreTrainedTokenizerBase, tokens: list[int]) -> str:
    return tokenizer.decode(tokens, skip_special_tokens=True).strip().rstrip("\ufffd")  # a character cut off by the token limit


def sample_answers(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    stop_ids: list[int],
) -> list[str]:
    """``n`` answers to one rendered prompt, sampled in one call; the same seed gives the same answers."""
    model.eval()
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop_ids or [0])[0]
    with torch.no_grad():
        output = model.generate(**batch, do_sample=True, temperature=temperature, top_p=top_p, num_return_sequences=n,
                                max_new_tokens=max_new_tokens, eos_token_id=stop_ids or None, pad_token_id=pad)
    answers = []
    for row in output[:, batch["input_ids"].shape[1]:].tolist():
        end = next((position for position, token in enumerate(row) if token in stop_ids), len(row))
        answers.append(_answer_text(tokenizer, row[:end]))
    return answers


def answer_budget(tokenizer: PreTrainedTokenizerBase, references: list[str], cap: int = 256) -> int:
    """New tokens to allow: half again the longest reference answer, so a good answer is never cut."""
    longest = max((len(tokenizer(reference, add_special_tokens=False)["input_ids"]) for reference in references), default=32)
    return min(cap, int(longest * 1.5) + 8)
