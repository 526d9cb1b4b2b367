"""Duplicates, near-duplicates and conflicting duplicates.

Texts are compared after normalisation (NFKC, case folding, whitespace removed), and similarity is the
Jaccard index of character 3-gram sets. Character shingles need no word boundaries, so this works for
Japanese and Chinese as well as for English. Candidate pairs come from MinHash with banded LSH, so a
large file is not compared pair by pair; every candidate is then confirmed with the exact Jaccard index.
"""

from __future__ import annotations

import json
import unicodedata
import zlib
from collections import defaultdict

import numpy as np

from togi.data.examples import ClassificationExample, Dataset, Example, ExampleKind, Message
from togi.data.findings import Finding, Severity

SHINGLE_SIZE = 3
NUM_PERMUTATIONS = 64
LSH_BANDS = 16  # 16 bands x 4 rows: pairs above ~0.5 similarity very likely share a bucket
_MAX_COMPARISONS_PER_BUCKET_MEMBER = 200  # bounds the work when many texts share a bucket


def normalize_text(text: str) -> str:
    """NFKC (full-width to half-width, compatibility forms), case-folded, whitespace and punctuation
    removed: 「、」 versus 「。」 or a missing 「？」 does not make two examples different."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(char for char in folded if not char.isspace() and not unicodedata.category(char).startswith("P"))


def shingles(text: str, size: int = SHINGLE_SIZE) -> frozenset[str]:
    if len(text) <= size:
        return frozenset([text]) if text else frozenset()
    return frozenset(text[i : i + size] for i in range(len(text) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _conversation_text(messages: list[Message]) -> str:
    # System prompts are left out: a shared system prompt would make every pair look alike.
    return "\n".join(f"{m.role}:{m.content}" for m in messages if m.role != "system")


def comparable_text(example: Example) -> str:
    """The text two examples are compared on for near-duplicates."""
    if isinstance(example, ClassificationExample):
        return example.text
    if example.kind is ExampleKind.PREFERENCE:
        return _conversation_text(example.prompt + example.chosen + example.rejected)  # type: ignore[union-attr]
    return _conversation_text(example.messages)  # type: ignore[union-attr]


def _exact_key(example: Example) -> str:
    if isinstance(example, ClassificationExample):
        return json.dumps([example.text, example.label], ensure_ascii=False)
    parts = [[m.to_openai_dict() for m in getattr(example, name)] for name in ("messages", "prompt", "chosen", "rejected") if hasattr(example, name)]
    return json.dumps([parts, getattr(example, "label", None)], ensure_ascii=False, sort_keys=True)


class _MinHasher:
    def __init__(self, num_permutations: int = NUM_PERMUTATIONS, seed: int = 1) -> None:
        generator = np.random.default_rng(seed)
        # Multiply-shift hashing: (a * x + b) mod 2**64, keeping the high 32 bits; a is odd.
        self.a = generator.integers(1, 2**63, size=num_permutations, dtype=np.uint64) | np.uint64(1)
        self.b = generator.integers(0, 2**63, size=num_permutations, dtype=np.uint64)

    def signature(self, shingle_set: frozenset[str]) -> np.ndarray:
        values = np.fromiter((zlib.crc32(s.encode("utf-8")) for s in shingle_set), dtype=np.uint64, count=len(shingle_set))
        if values.size == 0:
            return np.zeros(len(self.a), dtype=np.uint64)
        hashed = (values[:, None] * self.a[None, :] + self.b[None, :]) >> np.uint64(32)
        return hashed.min(axis=0)


def find_duplicates(dataset: Dataset, near_threshold: float = 0.8) -> list[Finding]:
    """Findings for exact duplicates, conflicting duplicates (same prompt, different answer) and
    near-duplicates. Each is reported on the later example and names the earlier one's line."""
    findings: list[Finding] = []
    examples = dataset.examples

    def report(example: Example, code: str, message: str, hint: str) -> None:
        findings.append(Finding(code=code, severity=Severity.WARNING, message=message, hint=hint, file=dataset.path,
                                line=example.source.line, example=example.source.index))

    first_exact: dict[str, Example] = {}
    first_prompt: dict[str, Example] = {}
    unique: list[Example] = []
    for example in examples:
        key = _exact_key(example)
        if key in first_exact:
            report(example, "duplicate", f"exact duplicate of line {first_exact[key].source.line}", "remove the repeated example")
            continue
        first_exact[key] = example
        unique.append(example)
        if dataset.kind in (ExampleKind.CHAT, ExampleKind.CLASSIFICATION):
            prompt = normalize_text(_conversation_text(example.prompt_messages))
            earlier = first_prompt.setdefault(prompt, example)
            if earlier is not example and normalize_text(earlier.final_answer) != normalize_text(example.final_answer):
                report(example, "conflicting_duplicate",
                       f"same input as line {earlier.source.line} but a different answer",
                       "keep the correct answer and remove the other, or make the inputs differ")
    for later, earlier, similarity in near_duplicate_pairs(unique, near_threshold):
        report(later, "near_duplicate",
               f"near-duplicate of line {earlier.source.line} (similarity {similarity:.2f} after normalisation)",
               "remove one of them, or vary the wording more")
    return findings


def near_duplicate_pairs(examples: list[Example], threshold: float) -> list[tuple[Example, Example, float]]:
    """(later, earlier, similarity) for each example that has an earlier near-duplicate, most similar first found."""
    texts = [normalize_text(comparable_text(example)) for example in examples]
    shingle_sets = [shingles(text) for text in texts]
    hasher = _MinHasher()
    rows = NUM_PERMUTATIONS // LSH_BANDS
    buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
    for position, shingle_set in enumerate(shingle_sets):
        signature = hasher.signature(shingle_set)
        for band in range(LSH_BANDS):
            buckets[(band, signature[band * rows : (band + 1) * rows].tobytes())].append(position)
    best: dict[int, tuple[float, int]] = {}  # later example -> (similarity, earlier example)
    first_with_text: dict[str, int] = {}
    for position, text in enumerate(texts):  # identical after normalisation: found without LSH
        earlier = first_with_text.setdefault(text, position)
        if earlier != position:
            best[position] = (1.0, earlier)
    for members in buckets.values():
        for offset, later in enumerate(members[1:], start=1):
            for earlier in members[max(0, offset - _MAX_COMPARISONS_PER_BUCKET_MEMBER) : offset]:
                if later in best and (best[later][1] == earlier or best[later][0] == 1.0):
                    continue
                similarity = 1.0 if texts[later] == texts[earlier] else jaccard(shingle_sets[later], shingle_sets[earlier])
                if similarity >= threshold and similarity > best.get(later, (0.0, -1))[0]:
                    best[later] = (similarity, earlier)
    return [(examples[later], examples[best[later][1]], best[later][0]) for later in sorted(best)]
