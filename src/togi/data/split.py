"""Deterministic train / validation / test splits, optionally stratified by label.

Sizes: ``round(n * ratio)``, at least one example when the ratio is positive. A stratified split gives
each class ``n_class * ratio`` examples rounded by the largest-remainder method, so every class is
within one example of its exact share and the split sizes still add up. Each example lands in exactly
one split, and each split keeps the file's original order.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass

from togi.errors import TogiError

SPLIT_NAMES = ("train", "val", "test")


class SplitError(TogiError, ValueError):
    """Ratios or labels no split can satisfy."""

    hint = "see `togi data split --help`"


@dataclass(frozen=True)
class Split:
    train: list[int]
    val: list[int]
    test: list[int]

    def parts(self) -> dict[str, list[int]]:
        return {"train": self.train, "val": self.val, "test": self.test}


def split_size(n: int, ratio: float) -> int:
    if ratio <= 0:
        return 0
    return max(1, round(n * ratio))


def _largest_remainder(quotas: dict[str, float], total: int, capacity: dict[str, int]) -> dict[str, int]:
    """Integer counts close to ``quotas`` that add up to ``total``, never above ``capacity``."""
    counts = {key: min(math.floor(quota), capacity[key]) for key, quota in quotas.items()}
    by_remainder = sorted(quotas, key=lambda key: (-(quotas[key] - math.floor(quotas[key])), -quotas[key], key))
    for key in by_remainder * 2:  # a second pass where the first met a full class
        if sum(counts.values()) >= total:
            break
        if counts[key] < capacity[key]:
            counts[key] += 1
    return counts


def split_indices(n: int, val_ratio: float, test_ratio: float = 0.0, *, labels: list[str] | None = None, seed: int = 42) -> Split:
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise SplitError(f"--val-ratio {val_ratio} and --test-ratio {test_ratio} must be in [0, 1) and add up to less than 1",
                         "e.g. --val-ratio 0.1 --test-ratio 0.1")
    n_val, n_test = split_size(n, val_ratio), split_size(n, test_ratio)
    if n - n_val - n_test < 1:
        raise SplitError(f"{n} examples are too few for these ratios: nothing would be left to train on",
                         "lower the ratios, or add examples")
    rng = random.Random(seed)
    if labels is None:
        order = list(range(n))
        rng.shuffle(order)
        return Split(train=sorted(order[n_test + n_val :]), val=sorted(order[n_test : n_test + n_val]), test=sorted(order[:n_test]))
    if len(labels) != n:
        raise SplitError("one label per example is needed for a stratified split")
    members: dict[str, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        members[label].append(index)
    sizes = {label: len(indices) for label, indices in members.items()}
    test_counts = _largest_remainder({label: size * test_ratio for label, size in sizes.items()}, n_test, sizes)
    left = {label: sizes[label] - test_counts[label] for label in sizes}
    val_counts = _largest_remainder({label: size * val_ratio for label, size in sizes.items()}, n_val, left)
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for label in sorted(members):
        indices = members[label][:]
        rng.shuffle(indices)
        test += indices[: test_counts[label]]
        val += indices[test_counts[label] : test_counts[label] + val_counts[label]]
        train += indices[test_counts[label] + val_counts[label] :]
    return Split(train=sorted(train), val=sorted(val), test=sorted(test))
