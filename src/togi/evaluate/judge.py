"""LLM-as-judge: pairwise comparison of the tuned model's answer with the baseline's (seed 003).

Each pair is judged twice, with the answers in both orders, to cancel position bias: the tuned model
wins only if it wins in both orders, loses only if it loses in both, and anything else is a tie. A
judge that always prefers "A" therefore yields ties, not wins. Verdicts are JSON
(``winner``, ``reason``, scores 1-5), parsed robustly from whatever text the judge returns.

The judge is any ``ChatClient``: an OpenAI-compatible chat endpoint (``--judge-url``, ``--judge-model``,
key from ``TOGI_JUDGE_API_KEY`` or ``OPENAI_API_KEY``) or a local model (``ChatModel``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from togi.data.json_reply import first_json
from togi.models.chat_client import ChatClient

JUDGE_SYSTEM = (
    "You are an impartial judge. Compare two answers to the same question. Judge correctness first, "
    "then relevance, then format and concision. Ignore the order of the answers and their length."
)
JUDGE_TEMPLATE = (
    "Question:\n{question}\n\nReference answer:\n{reference}\n\nAnswer A:\n{answer_a}\n\nAnswer B:\n{answer_b}\n\n"
    'Reply with JSON only: {{"winner": "A" or "B" or "tie", "reason": "one sentence", "score_a": 1-5, "score_b": 1-5}}'
)


@dataclass(frozen=True)
class Verdict:
    winner: str | None  # "A", "B", "tie", or None when the reply could not be read
    reason: str = ""
    score_a: int | None = None
    score_b: int | None = None


def _winner(value: Any) -> str | None:
    text = str(value).strip().strip("\"'").lower()
    if text in ("a", "answer a", "model a", "1"):
        return "A"
    if text in ("b", "answer b", "model b", "2"):
        return "B"
    if text in ("tie", "draw", "equal", "both", "none"):
        return "tie"
    return None


def _score(value: Any) -> int | None:
    try:
        return min(5, max(1, int(round(float(value)))))
    except (TypeError, ValueError):
        return None


def parse_verdict(text: str) -> Verdict:
    data = first_json(text, "{")
    if data is not None:
        return Verdict(winner=_winner(data.get("winner")), reason=str(data.get("reason", ""))[:500],
                       score_a=_score(data.get("score_a")), score_b=_score(data.get("score_b")))
    match = re.search(r"winner\W+(answer\s+)?(a|b|tie)\b", text, re.IGNORECASE)
    return Verdict(winner=_winner(match.group(2)) if match else None, reason=text.strip()[:500])


def combine_orders(tuned_first: Verdict, base_first: Verdict) -> str:
    """'win', 'loss', 'tie' or 'invalid' for the tuned model, from the verdicts in both orders."""
    outcomes = []
    for verdict, tuned_is in ((tuned_first, "A"), (base_first, "B")):
        if verdict.winner is None:
            continue
        outcomes.append("tie" if verdict.winner == "tie" else ("win" if verdict.winner == tuned_is else "loss"))
    if not outcomes:
        return "invalid"
    return outcomes[0] if len(set(outcomes)) == 1 else "tie"


@dataclass(frozen=True)
class JudgeSummary:
    wins: int
    ties: int
    losses: int
    invalid: int
    win_rate: float
    win_rate_ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"wins": self.wins, "ties": self.ties, "losses": self.losses, "invalid": self.invalid,
                "win_rate": self.win_rate, "win_rate_ci95": list(self.win_rate_ci95)}


def wilson_interval(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return (0.0, 1.0)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4))


def summarize(outcomes: list[str]) -> JudgeSummary:
    wins, ties, losses, invalid = (outcomes.count(name) for name in ("win", "tie", "loss", "invalid"))
    valid = wins + ties + losses
    return JudgeSummary(wins=wins, ties=ties, losses=losses, invalid=invalid,
                        win_rate=round(wins / valid, 4) if valid else 0.0, win_rate_ci95=wilson_interval(wins, valid))


def judge_pairs(judge: ChatClient, items: list[dict[str, str]], progress: Callable[[int], None] = lambda done: None) -> tuple[list[dict[str, Any]], JudgeSummary]:
    """``items`` hold question, reference, tuned and baseline; returns per-item judgements and the summary."""
    judgements = []
    for done, item in enumerate(items, start=1):
        verdicts = []
        for answer_a, answer_b in ((item["tuned"], item["baseline"]), (item["baseline"], item["tuned"])):
            prompt = JUDGE_TEMPLATE.format(question=item["question"], reference=item["reference"], answer_a=answer_a, answer_b=answer_b)
            verdicts.append(parse_verdict(judge.complete([{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}])))
        judgements.append({"outcome": combine_orders(*verdicts), "tuned_first": verdicts[0].__dict__, "base_first": verdicts[1].__dict__})
        progress(done)
    return judgements, summarize([judgement["outcome"] for judgement in judgements])
