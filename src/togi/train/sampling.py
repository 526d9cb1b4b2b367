"""Batch orders that a resumed run reproduces exactly.

transformers' length-grouped sampler shuffles with the global random state at the start of each epoch,
so a run resumed in mid-epoch sees a different order than the run it continues. These derive each
epoch's order from (seed, epoch) alone.
"""

from __future__ import annotations

import random
from typing import Hashable, Iterator, Sequence

import torch
from torch.utils.data import Sampler
from transformers.trainer_pt_utils import get_length_grouped_indices


class SeededLengthGroupedSampler(Sampler[int]):
    """Examples of similar length batched together (less padding), in an order fixed by seed and epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))

    def __len__(self) -> int:
        return len(self.lengths)


class LabelBalancedSampler(Sampler[int]):
    """Examples in rounds that hold one of each label, in a fresh order each epoch.

    With few examples and a batch of 4, the labels of the last batches decide where a classifier's prior
    sits, and a generative model trained that way answers one label for everything (benchmarks/QUALITY.md).
    Here every run of ``len(labels)`` consecutive examples holds each label once while every label still
    has examples, so a batch whose size is a multiple of the number of labels is exactly balanced and its
    gradient carries what tells the labels apart, not which one came last. Examples without a label and a
    larger label's surplus follow at the end of the epoch, shuffled.
    """

    def __init__(self, labels: Sequence[Hashable | None], seed: int) -> None:
        self.labels = list(labels)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(f"{self.seed}/{self.epoch}")
        by_label: dict[Hashable, list[int]] = {}
        unlabelled = []
        for index, label in enumerate(self.labels):
            (unlabelled if label is None else by_label.setdefault(label, [])).append(index)
        queues = [rng.sample(indices, len(indices)) for _, indices in sorted(by_label.items(), key=lambda item: str(item[0]))]
        rounds = min((len(queue) for queue in queues), default=0)
        order = []
        for position in range(rounds):
            round_ = [queue[position] for queue in queues]
            rng.shuffle(round_)
            order += round_
        rest = unlabelled + [index for queue in queues for index in queue[rounds:]]
        return iter(order + rng.sample(rest, len(rest)))

    def __len__(self) -> int:
        return len(self.labels)
