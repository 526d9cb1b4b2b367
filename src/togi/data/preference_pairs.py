"""Preference pairs from a model's own answers (seed 003): for each prompt, sample n answers, let a judge
pick the best and the worst, and write the two as a DPO pair (``prompt`` + ``chosen`` + ``rejected``).

- The judge sees the distinct answers numbered, in an order shuffled per prompt and recorded, so a judge
  that favours a position does not always favour the same sample. With ``both_orders`` it judges again
  in the reverse order and the pair is kept only when both verdicts name the same best and worst.
- No single prompt stops the run: a repeated prompt, answers that are all the same, or a verdict that
  cannot be used skip the prompt and are counted. An error of the judge (an unreachable endpoint) does stop it.
- Pairs are appended and synced one by one, each with its prompt's content hash; a run started again
  skips the prompts already written, so a killed run continues where it stopped.

Like augmentation (``augment.py``), this module knows nothing of models or endpoints: the sampled model is any
``sample(conversation, seed) -> answers`` and the judge any ``complete(messages) -> str``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from togi.data.examples import Prompt
from togi.data.json_reply import first_json
from togi.data.quality import normalize_text
from togi.data.resumable import ResumableJsonl

PAIR_JUDGE_SYSTEM = (
    "You are an impartial judge. You are shown several answers to the same request. Judge correctness first, "
    "then relevance, then format and concision. Ignore the order of the answers and their length."
)
PAIR_JUDGE_TEMPLATE = (
    "{request}\n\n{answers}\n\nWhich answer is the best, and which is the worst? Reply with JSON only: "
    '{{"best": <answer number>, "worst": <answer number>, "reason": "one sentence"}}'
)
SKIP_REASONS = {
    "duplicate_prompt": "the same prompt came earlier in the file",
    "identical_answers": "fewer than 2 different non-empty answers",
    "unusable_verdict": "the judge's reply named no valid, different best and worst",
    "order_dependent": "the judge's verdict changed with the order of the answers",
}

# (conversation, seed) -> n sampled answers
Sampler = Callable[[list[dict[str, str]], int], list[str]]
# messages -> the judge's reply
Judge = Callable[[list[dict[str, str]]], str]


@dataclass(frozen=True)
class PairVerdict:
    best: int  # 0-based position in the list the judge was shown
    worst: int
    reason: str


@dataclass(frozen=True)
class Skip:
    line: int
    reason: str  # a key of SKIP_REASONS
    detail: str = ""


@dataclass
class PrefsOptions:
    n: int = 4
    seed: int = 0
    both_orders: bool = False
    system: str | None = None  # the sampled model's system prompt, added to prompts that have none
    judge_name: str = ""


@dataclass
class PrefsSummary:
    prompts: int
    written: int = 0
    already_done: int = 0  # written by an earlier, interrupted run
    dropped_partial_line: bool = False
    skipped: list[Skip] = field(default_factory=list)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(skip.reason for skip in self.skipped))


def _answer_number(value: Any, count: int) -> int | None:
    match = re.fullmatch(r"\s*(?:answer\s*)?#?(\d+)\s*", str(value), re.IGNORECASE)  # 2, "2", "Answer 2", "#2"
    number = int(match.group(1)) if match and not isinstance(value, bool) else 0
    return number - 1 if 1 <= number <= count else None


def parse_pair_verdict(text: str, count: int) -> PairVerdict | None:
    """The best and worst of ``count`` answers from the judge's reply, or None when it names no valid, different pair."""
    data = first_json(text, "{")
    if not isinstance(data, dict):
        return None
    best, worst = _answer_number(data.get("best"), count), _answer_number(data.get("worst"), count)
    if best is None or worst is None or best == worst:
        return None
    return PairVerdict(best=best, worst=worst, reason=str(data.get("reason", "")).strip()[:500])


def judge_messages(conversation: list[dict[str, str]], answers: list[str]) -> list[dict[str, str]]:
    if [message["role"] for message in conversation] == ["user"]:
        request = f"Question:\n{conversation[0]['content']}"
    else:
        request = "Conversation (the answers reply to its last message):\n" + "\n".join(
            f"[{message['role']}] {message['content']}" for message in conversation)
    numbered = "\n\n".join(f"Answer {number}:\n{answer}" for number, answer in enumerate(answers, start=1))
    return [{"role": "system", "content": PAIR_JUDGE_SYSTEM},
            {"role": "user", "content": PAIR_JUDGE_TEMPLATE.format(request=request, answers=numbered)}]


def prompt_seed(seed: int, key: str) -> int:
    """A seed per prompt from the run's seed and the prompt's hash: the same answers whether or not the run was interrupted."""
    return (seed * 1_000_003 + int(key[:12], 16)) % 2**32


def distinct_answers(answers: list[str]) -> list[str]:
    """Non-empty answers, the first of each that reads the same after normalisation (NFKC, case, spaces, punctuation)."""
    kept: dict[str, str] = {}
    for answer in answers:
        if answer.strip():
            kept.setdefault(normalize_text(answer), answer.strip())
    return list(kept.values())


def _pair(prompt: Prompt, sample: Sampler, judge: Judge, options: PrefsOptions) -> dict[str, Any] | Skip:
    conversation = [message.to_template_dict() for message in prompt.messages]
    if options.system and conversation[0]["role"] != "system":
        conversation = [{"role": "system", "content": options.system}, *conversation]
    seed = prompt_seed(options.seed, prompt.key)
    answers = distinct_answers(sample(conversation, seed))
    if len(answers) < 2:
        return Skip(prompt.source.line, "identical_answers", f"{len(answers)} different of {options.n}")
    order = list(range(len(answers)))
    random.Random(seed).shuffle(order)
    verdicts = []
    for shown in [order, order[::-1]] if options.both_orders else [order]:
        reply = judge(judge_messages(conversation, [answers[i] for i in shown]))
        verdict = parse_pair_verdict(reply, len(answers))
        if verdict is None:
            return Skip(prompt.source.line, "unusable_verdict", reply.strip()[:200])
        verdicts.append((shown[verdict.best], shown[verdict.worst], verdict.reason))
    best, worst, reason = verdicts[0]
    if len(verdicts) == 2 and verdicts[1][:2] != (best, worst):
        other_best, other_worst, _ = verdicts[1]
        return Skip(prompt.source.line, "order_dependent",
                    f"best/worst sample {best + 1}/{worst + 1} in one order, {other_best + 1}/{other_worst + 1} in the other")
    return {"prompt": conversation, "chosen": [{"role": "assistant", "content": answers[best]}],
            "rejected": [{"role": "assistant", "content": answers[worst]}],
            "togi": {"prompt_sha256": prompt.key, "prompt_line": prompt.source.line, "reason": reason, "judge": options.judge_name,
                     "n": options.n, "distinct_answers": len(answers), "shown_order": order, "both_orders": options.both_orders}}


def _key_of(record: dict[str, Any]) -> str | None:
    metadata = record.get("togi")
    return metadata.get("prompt_sha256") if isinstance(metadata, dict) else None


def generate_preference_pairs(prompts: list[Prompt], sample: Sampler, judge: Judge, out: Path | str, options: PrefsOptions,
                              progress: Callable[[int], None] = lambda done: None) -> PrefsSummary:
    """Append a judged pair to ``out`` for each prompt not already there; returns what was written and skipped."""
    with ResumableJsonl(out, _key_of) as output:
        summary = PrefsSummary(prompts=len(prompts), dropped_partial_line=output.dropped_partial_line)
        seen: set[str] = set()
        for done, prompt in enumerate(prompts, start=1):
            if prompt.key in seen:
                summary.skipped.append(Skip(prompt.source.line, "duplicate_prompt"))
            elif prompt.key in output.done:
                summary.already_done += 1
            else:
                result = _pair(prompt, sample, judge, options)
                if isinstance(result, Skip):
                    summary.skipped.append(result)
                else:
                    output.append(result)
                    summary.written += 1
            seen.add(prompt.key)
            progress(done)
    return summary
