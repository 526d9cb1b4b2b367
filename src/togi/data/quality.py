"""Duplicates, near-duplicates and conflicting duplicates.

Texts are compared after normalisation (NFKC, case folding, whitespace removed), and similarity is the
Jaccard index of character 3-gram sets. Character shingles need no word boundaries, so this works for
Japanese and Chinese as well as for English. Candidate pairs come from MinHash with banded LSH, so a
large file is not compared pair by pair; every candidate is then confirmed with the exact Jaccard index.

The work per example is bounded: it is compared with the few members of each of its buckets just
before it (short texts crowd a few buckets), with each candidate once however many buckets they share,
and only where their signatures agree on enough hashes to make the threshold reachable. A text
identical to an earlier one after normalisation is its duplicate without any search.
"""

from __future__ import annotations

import json
import math
import unicodedata
from typing import Any

import numpy as np

from togi.data.examples import ClassificationExample, Dataset, Example, ExampleKind, Message
from togi.data.findings import Finding, Severity

SHINGLE_SIZE = 3
NUM_PERMUTATIONS = 64
LSH_BANDS = 16  # 16 bands x 4 rows: pairs above ~0.5 similarity very likely share a bucket
_BUCKET_WINDOW = 16  # the members of a bucket just before an example that it is compared with
# A candidate is confirmed only if its signature agrees on at least (threshold - margin) of the hashes:
# for a pair at the threshold, fewer agree with a probability under 1e-4.
_ESTIMATE_MARGIN = 0.2
_PAIRS_PER_CHUNK = 100_000


class _DroppedCharacters(dict):
    """A str.translate table deleting whitespace and punctuation, filled in as characters are met."""

    def __missing__(self, code: int) -> int | None:
        char = chr(code)
        self[code] = None if char.isspace() or unicodedata.category(char)[0] == "P" else code
        return self[code]


_DROPPED = _DroppedCharacters()


def normalize_text(text: str) -> str:
    """NFKC (full-width to half-width, compatibility forms), case-folded, whitespace and punctuation
    removed: 「、」 versus 「。」 or a missing 「？」 does not make two examples different."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_DROPPED)


def shingles(text: str, size: int = SHINGLE_SIZE) -> frozenset[str]:
    if len(text) <= size:
        return frozenset([text]) if text else frozenset()
    return frozenset(text[i : i + size] for i in range(len(text) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


# One private-use character per role, so that who said what counts, but the roles' names add no
# 3-grams that every example shares (with short texts those alone would make unrelated pairs look alike).
_ROLE_MARKS = {"user": "\ue000", "assistant": "\ue001", "tool": "\ue002", "function": "\ue003"}


def _conversation_text(messages: list[Message]) -> str:
    # System prompts are left out: a shared system prompt would make every pair look alike.
    return "".join(_ROLE_MARKS[m.role] + m.content for m in messages if m.role != "system")


def comparable_text(example: Example) -> str:
    """The text two examples are compared on for near-duplicates."""
    if isinstance(example, ClassificationExample):
        return example.text
    if example.kind is ExampleKind.PREFERENCE:
        return _conversation_text(example.prompt + example.chosen + example.rejected)  # type: ignore[union-attr]
    return _conversation_text(example.messages)  # type: ignore[union-attr]


def _exact_key(example: Example) -> tuple[Any, ...]:
    if isinstance(example, ClassificationExample):
        return (example.text, example.label)
    parts = tuple(tuple(_message_key(m) for m in getattr(example, name)) for name in ("messages", "prompt", "chosen", "rejected") if hasattr(example, name))
    return (parts, getattr(example, "label", None))


def _message_key(message: Message) -> tuple[Any, ...]:
    calls = json.dumps(message.tool_calls, ensure_ascii=False, sort_keys=True) if message.tool_calls else None
    return (message.role, message.content, message.weight, message.name, message.tool_call_id, calls)


def _minhash_signatures(texts: list[str], seed: int = 1) -> np.ndarray:
    """One row of NUM_PERMUTATIONS MinHash values per text, over its character 3-grams, all texts at once.

    Each 3-gram is packed exactly into one integer (21 bits per code point, 0 for "no character", so a
    text shorter than three characters is one short gram), then hashed NUM_PERMUTATIONS ways by
    multiply-shift ((a * x + b) mod 2**64, the high 32 bits; a odd); a text's value is the minimum over its grams.
    """
    generator = np.random.default_rng(seed)
    multipliers = generator.integers(1, 2**63, size=NUM_PERMUTATIONS, dtype=np.uint64) | np.uint64(1)
    increments = generator.integers(0, 2**63, size=NUM_PERMUTATIONS, dtype=np.uint64)
    lengths = np.array([len(text) for text in texts], dtype=np.int64)
    # Code points + 1, each text followed by SHINGLE_SIZE zeros, so no gram spans two texts.
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64) + 1
    codes = np.insert(codes, np.repeat(np.cumsum(lengths), SHINGLE_SIZE), 0)
    packed = (codes[:-2] << np.uint64(42)) | (codes[1:-1] << np.uint64(21)) | codes[2:]
    grams_per_text = np.maximum(lengths - (SHINGLE_SIZE - 1), 1)
    text_starts = np.cumsum(lengths + SHINGLE_SIZE) - (lengths + SHINGLE_SIZE)
    segment_starts = np.cumsum(grams_per_text) - grams_per_text
    grams = packed[np.repeat(text_starts - segment_starts, grams_per_text) + np.arange(grams_per_text.sum())]
    signatures = np.empty((len(texts), NUM_PERMUTATIONS), dtype=np.uint32)
    for column, (multiplier, increment) in enumerate(zip(multipliers, increments)):
        signatures[:, column] = np.minimum.reduceat((grams * multiplier + increment) >> np.uint64(32), segment_starts)
    return signatures


def find_duplicates(dataset: Dataset, near_threshold: float = 0.8) -> list[Finding]:
    """Findings for exact duplicates, conflicting duplicates (same prompt, different answer) and
    near-duplicates. Each is reported on the later example and names the earlier one's line."""
    findings: list[Finding] = []
    examples = dataset.examples

    def report(example: Example, code: str, message: str, hint: str) -> None:
        findings.append(Finding(code=code, severity=Severity.WARNING, message=message, hint=hint, file=dataset.path,
                                line=example.source.line, example=example.source.index))

    first_exact: dict[tuple[Any, ...], Example] = {}
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
    """(later, earlier, similarity) for each example that has an earlier near-duplicate: the most similar one, the earliest of equals."""
    texts = [normalize_text(comparable_text(example)) for example in examples]
    best: dict[int, tuple[float, int]] = {}  # later example -> (similarity, earlier example)
    first_with_text: dict[str, int] = {}
    for position, text in enumerate(texts):  # identical after normalisation: found without LSH
        earlier = first_with_text.setdefault(text, position)
        if earlier != position:
            best[position] = (1.0, earlier)
    distinct = sorted(first_with_text.values())
    if not distinct:
        return []
    signatures = _minhash_signatures([texts[position] for position in distinct])
    later, earlier = _candidate_pairs(signatures)
    agreeing = np.zeros(len(later), dtype=np.int64)
    for start in range(0, len(later), _PAIRS_PER_CHUNK):  # in chunks: two rows of 64 hashes per pair
        chunk = slice(start, start + _PAIRS_PER_CHUNK)
        agreeing[chunk] = np.count_nonzero(signatures[later[chunk]] == signatures[earlier[chunk]], axis=1)
    likely = agreeing >= math.ceil((threshold - _ESTIMATE_MARGIN) * NUM_PERMUTATIONS)
    shingle_sets: dict[int, frozenset[str]] = {}

    def shingles_of(position: int) -> frozenset[str]:
        if position not in shingle_sets:
            shingle_sets[position] = shingles(texts[position])
        return shingle_sets[position]

    for later_row, earlier_row in zip(later[likely].tolist(), earlier[likely].tolist()):  # by later, then earlier
        pair = (distinct[later_row], distinct[earlier_row])
        similarity = jaccard(shingles_of(pair[0]), shingles_of(pair[1]))
        if similarity >= threshold and similarity > best.get(pair[0], (0.0, -1))[0]:
            best[pair[0]] = (similarity, pair[1])
    return [(examples[position], examples[best[position][1]], best[position][0]) for position in sorted(best)]


def _candidate_pairs(signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(later, earlier) row pairs, each once, that share an LSH bucket in some band, the earlier among the
    _BUCKET_WINDOW members of that bucket just before the later."""
    count = len(signatures)
    rows = NUM_PERMUTATIONS // LSH_BANDS
    # A band's rows mixed into one 64-bit key; two bands colliding by chance add a candidate, nothing more.
    mixers = np.random.default_rng(2).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    pairs = np.zeros(0, dtype=np.int64)  # later * count + earlier, sorted, each once
    for band in range(LSH_BANDS):
        keys = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64) @ mixers
        order = np.argsort(keys, kind="stable")  # by bucket, then by position
        sorted_keys = keys[order]
        found = [pairs]
        for lag in range(1, _BUCKET_WINDOW + 1):
            same = np.flatnonzero(sorted_keys[lag:] == sorted_keys[:-lag])
            if not same.size:  # no bucket has more members than this
                break
            found.append(order[same + lag] * count + order[same])
        pairs = np.sort(np.concatenate(found))
        pairs = pairs[np.flatnonzero(np.diff(pairs, prepend=-1))]  # np.unique would hash: slower here
    return pairs // count, pairs % count
