"""Scores of one answer against its reference, for Japanese as well as English, shared by ``togi eval``
and by training, which scores generated answers on the validation split at each evaluation.

- Exact match after NFKC normalisation (full-width and half-width forms agree), case and surrounding
  whitespace ignored.
- ROUGE-L with rouge-score, but with a CJK-aware tokenizer: rouge-score's default tokenizer keeps only
  ``[a-z0-9]``, so every Japanese answer would score 0. Here each CJK character is a token and runs of
  other letters or digits are words.
"""

from __future__ import annotations

import re
import unicodedata

# Hiragana, katakana, CJK ideographs (with extension A and compatibility forms), half-width katakana, Hangul.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\uac00-\ud7af"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}_]+", re.UNICODE)
_HAS_CJK = re.compile(rf"[{_CJK}]")


def has_cjk(text: str) -> bool:
    return _HAS_CJK.search(text) is not None


def normalize_answer(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def tokenize_for_overlap(text: str) -> list[str]:
    """CJK characters one by one, other words whole, punctuation dropped, after NFKC and case folding."""
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


class _CJKTokenizer:
    """The tokenizer interface rouge-score expects."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize_for_overlap(text)


def rouge_l(prediction: str, reference: str) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_CJKTokenizer())
    return scorer.score(reference, prediction)["rougeL"].fmeasure
