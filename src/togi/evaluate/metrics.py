"""Text metrics that are right for Japanese as well as English.

- Exact match after NFKC normalisation (full-width and half-width forms agree), case and surrounding
  whitespace ignored.
- ROUGE-L with rouge-score, but with a CJK-aware tokenizer: rouge-score's default tokenizer keeps only
  ``[a-z0-9]``, so every Japanese answer would score 0. Here each CJK character is a token and runs of
  other letters or digits are words.
- BLEU and chrF with sacrebleu. BLEU is tokenised per character when the references contain CJK text
  (``tokenize="char"``), and with sacrebleu's standard ``13a`` otherwise; chrF is character-based.
- Accuracy and macro-F1 for classification-style answers, through a label extractor (a regex or a list of
  labels). An answer with no recognisable label counts as wrong.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from togi.data.answer_metrics import exact_match, has_cjk, normalize_answer, rouge_l, tokenize_for_overlap  # noqa: F401  (below train/, which scores answers with them)
from togi.data.labels import accuracy_and_macro_f1  # noqa: F401  (defined below train/, which scores classifiers with it)

# For each metric, whether a higher value is better (the deploy gate and the report's deltas use this).
HIGHER_IS_BETTER = {
    "exact_match": True, "rougeL": True, "bleu": True, "chrf": True, "accuracy": True, "macro_f1": True,
    "perplexity": False, "mean_token_loss": False,
}


def bleu_tokenizer(references: Sequence[str]) -> str:
    return "char" if any(has_cjk(reference) for reference in references) else "13a"


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(list(predictions), [list(references)], tokenize=bleu_tokenizer(references)).score


def corpus_chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf(list(predictions), [list(references)]).score


@dataclass(frozen=True)
class LabelExtractor:
    """Finds the label in an answer: the first group of ``pattern``, or the first of ``labels`` that occurs."""

    pattern: re.Pattern[str] | None = None
    labels: tuple[str, ...] = ()

    def __call__(self, text: str) -> str | None:
        normalized = unicodedata.normalize("NFKC", text)
        if self.pattern is not None:
            match = self.pattern.search(normalized)
            if match is None:
                return None
            return (match.group(1) if self.pattern.groups else match.group(0)).strip()
        found = [(normalized.find(label), label) for label in self.labels if label in normalized]
        return min(found)[1] if found else None
