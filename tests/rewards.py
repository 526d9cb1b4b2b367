"""Reward functions for the RL stage's tests, in TRL's signature: (prompts, completions, **kwargs) -> one score each."""

from __future__ import annotations

import unicodedata


def _text(completion) -> str:
    return completion if isinstance(completion, str) else "".join(message.get("content", "") for message in completion)


def japanese_share(prompts=None, completions=None, **kwargs) -> list[float]:
    """The share of the completion's characters that are kana or kanji: dense, so a tiny model's progress shows."""
    scores = []
    for completion in completions or []:
        text = _text(completion)
        japanese = sum(1 for ch in text if "CJK" in unicodedata.name(ch, "") or "HIRAGANA" in unicodedata.name(ch, "")
                       or "KATAKANA" in unicodedata.name(ch, ""))
        scores.append(japanese / max(len(text), 1))
    return scores
