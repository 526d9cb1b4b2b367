"""Batch order that a resumed run reproduces exactly.

transformers' length-grouped sampler shuffles with the global random state at the start of each epoch,
so a run resumed in mid-epoch sees a different order than the run it continues. This one derives each
epoch's order from (seed, epoch) alone.
"""

from __future__ import annotations

from typing import Iterator

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
