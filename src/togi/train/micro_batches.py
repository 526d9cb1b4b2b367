"""Passes of a bounded number of tokens: a padding-free batch split at example boundaries.

A training step's memory is mostly the activations its forward pass keeps for the backward pass, about
1.4 MB per token for SmolLM2-135M with LoRA in float32, so a batch's peak grows with its tokens: six reviews of
up to 600 tokens held 6.4 GB (``benchmarks/RESULTS.md``). ``split_padding_free_batch`` cuts a padding-free row
(TRL's collator: the examples end to end, ``cu_seq_lens_*`` marking where each starts) into consecutive rows of
whole examples, each within a token budget (an example longer than the budget is a row of its own). The trainer
runs the forward and backward pass of each in turn before the optimizer step, each loss divided by the labelled
tokens of the whole batch, so the gradients add up to the whole batch's: the same step, with the activations of
one piece alive at a time. On a CPU the smaller passes are also a little faster (less memory to touch).

Examples never attend to each other in a padding-free row and its first label of each example is -100
(TRL's collator sets it), so no term of the loss crosses a cut.
"""

from __future__ import annotations

from typing import Any

import torch

from togi.train.label_weights import LABEL_WEIGHTS

# The keys of TRL's padding-free batches, and togi's per-token loss weights; a batch with any other key is left alone.
PER_TOKEN_KEYS = ("input_ids", "labels", "position_ids", "seq_idx", LABEL_WEIGHTS)
_BOUNDS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def example_starts(batch: dict[str, Any]) -> list[int] | None:
    """Each example's first index in a padding-free row, then the row's end; None unless the batch is a single
    padding-free row of known keys (``micro_batches`` and ``shared_prefix`` rewrite nothing else)."""
    bounds = batch.get("cu_seq_lens_q")
    if (bounds is None or set(batch) - set(PER_TOKEN_KEYS) - set(_BOUNDS) or batch["input_ids"].shape[0] != 1
            or not torch.equal(bounds, batch.get("cu_seq_lens_k", bounds))):
        return None
    return bounds.tolist()


def example_groups(lengths: list[int], max_tokens: int, shared_prefix: int = 0) -> list[tuple[int, int]]:
    """Consecutive ``(first, end)`` ranges of example indices, each holding at most ``max_tokens`` tokens (an
    example longer than that alone). With ``shared_prefix``, the examples' first that many tokens count once per
    range, as ``shared_prefix.share_common_prefix`` will lay them out."""
    groups: list[tuple[int, int]] = []
    first, tokens = 0, shared_prefix
    for index, length in enumerate(lengths):
        if index > first and tokens + length - shared_prefix > max_tokens:
            groups.append((first, index))
            first, tokens = index, shared_prefix
        tokens += length - shared_prefix
    if lengths:
        groups.append((first, len(lengths)))
    return groups


def split_padding_free_batch(batch: dict[str, Any], max_tokens: int, shared_prefix: int = 0) -> list[dict[str, Any]]:
    """The batch as consecutive padding-free batches of at most ``max_tokens`` tokens each (see the module's
    docstring; ``shared_prefix`` as in ``example_groups``); ``[batch]`` itself when it fits, or when it is not a
    single padding-free row of known keys."""
    starts = example_starts(batch)
    if starts is None:
        return [batch]
    bounds = batch["cu_seq_lens_q"]
    groups = example_groups([end - start for start, end in zip(starts, starts[1:])], max_tokens, shared_prefix)
    if len(groups) == 1:
        return [batch]
    pieces = []
    for first, end in groups:
        begin, stop = starts[first], starts[end]
        piece = {key: batch[key][:, begin:stop] for key in PER_TOKEN_KEYS if key in batch}
        piece_bounds = bounds[first : end + 1] - begin
        piece["cu_seq_lens_q"] = piece["cu_seq_lens_k"] = piece_bounds
        piece["max_length_q"] = piece["max_length_k"] = int(piece_bounds.diff().max())
        if "seq_idx" in piece:
            piece["seq_idx"] = piece["seq_idx"] - piece["seq_idx"][0, 0]
        pieces.append(piece)
    return pieces
