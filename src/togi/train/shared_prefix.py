"""One copy of what every example of a pass begins with: the system prompt computed once, not once per example.

Chat examples of one job usually begin with the same tokens: the chat template's system prompt (SmolLM2 adds
its own when an example has none: 20 tokens) and the opening of the user's turn. In a batch of short examples that
shared prefix is a large part of the work; in 64 one-line calculator chats it is half of every example.
``share_common_prefix`` rewrites a padding-free row (TRL's collator: the examples end to end, ``cu_seq_lens_*``
marking where each starts) so that the prefix appears once, first, followed by each example's remainder with
its own positions (continuing after the prefix). ``attention.sdpa_per_example`` reads ``SHARED_PREFIX`` and lets
each remainder attend to the prefix and, causally, to itself; the prefix attends causally to itself only.

This is the same computation: every remainder sees exactly the keys and values it would see in its own copy
of the prefix, and the gradients that each copy would receive add up in the one copy. Two things differ, both
deliberately: the prefix carries no loss (a prefix is used only where no example has a label in it, nor on the
token after it, which the previous remainder's last position would otherwise predict), and with LoRA dropout the
prefix's dropout mask is drawn once for all the examples instead of once per example.
"""

from __future__ import annotations

from typing import Any

import torch

from togi.train.data import IGNORE_INDEX
from togi.train.micro_batches import PER_TOKEN_KEYS, example_starts

SHARED_PREFIX = "shared_prefix_length"  # the batch key sdpa_per_example reads
MIN_SHARED_PREFIX = 8  # tokens; below this the saving does not pay for the extra attention calls


def shareable_prefix_length(input_ids: torch.Tensor, labels: torch.Tensor, starts: list[int]) -> int:
    """The number of leading tokens all the examples of a row (``starts``: each one's first index, then the
    row's end) have in common and may share: none labelled, nor the token after them, and at least one
    token of each example left after them."""
    lengths = [end - start for start, end in zip(starts, starts[1:])]
    longest = min(lengths) - 1
    first = input_ids[starts[0] : starts[0] + longest]
    shared = longest
    for start in starts[:-1]:
        differs = (input_ids[start : start + longest] != first).nonzero()
        if len(differs):
            shared = min(shared, int(differs[0]))
        labelled = (labels[start : start + shared + 1] != IGNORE_INDEX).nonzero()
        if len(labelled):
            shared = min(shared, int(labelled[0]) - 1)
    return max(shared, 0)


def shared_prefix_length(batch: dict[str, Any]) -> int:
    """The prefix ``share_common_prefix`` would lay out once for this batch, or 0."""
    starts = example_starts(batch)
    if starts is None or len(starts) < 3:  # one example has no one to share with
        return 0
    shared = shareable_prefix_length(batch["input_ids"][0], batch["labels"][0], starts)
    return shared if shared >= MIN_SHARED_PREFIX else 0


def share_common_prefix(batch: dict[str, Any]) -> dict[str, Any]:
    """The row with its examples' common prefix once (see the module's docstring), or ``batch`` itself when
    the examples share fewer than ``MIN_SHARED_PREFIX`` tokens or the batch is not a single padding-free row."""
    shared = shared_prefix_length(batch)
    if not shared:
        return batch
    bounds = batch["cu_seq_lens_q"]
    starts = bounds.tolist()
    kept = torch.ones(batch["input_ids"].shape[1], dtype=torch.bool)
    for start in starts[1:-1]:
        kept[start : start + shared] = False
    rewritten = {key: batch[key][:, kept] for key in PER_TOKEN_KEYS if key in batch}
    remainders = [end - start - shared for start, end in zip(starts, starts[1:])]
    new_bounds = torch.tensor([0, *torch.tensor([shared, *remainders]).cumsum(0).tolist()], dtype=bounds.dtype)
    rewritten["cu_seq_lens_q"] = rewritten["cu_seq_lens_k"] = new_bounds
    rewritten["max_length_q"] = rewritten["max_length_k"] = int(new_bounds.diff().max())
    if "seq_idx" in rewritten:
        rewritten["seq_idx"] = torch.repeat_interleave(torch.arange(len(new_bounds) - 1, dtype=batch["seq_idx"].dtype), new_bounds.diff())[None]
    rewritten[SHARED_PREFIX] = shared
    return rewritten


def real_tokens(batch: dict[str, Any]) -> int:
    """The tokens of the examples a padding-free row stands for, each example's copy of a shared prefix included."""
    tokens = batch["position_ids"].size(1)
    shared = batch.get(SHARED_PREFIX)
    return tokens + shared * (len(batch["cu_seq_lens_q"]) - 3) if shared else tokens
