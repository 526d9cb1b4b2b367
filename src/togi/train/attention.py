"""Padding-free batches on a CPU: attention within each example, never across, and nothing masked.

A padding-free batch lays its examples end to end in one row; TRL's collator restarts the position
ids at each example and passes the boundaries as ``cu_seq_lens_q``. With ``sdpa``, transformers turns
that into a block-diagonal mask over the whole row, and PyTorch's CPU kernel then scores every pair of
positions in the row, the masked ones included, and cannot skip the causal upper triangle because a
mask is given. Flash attention's variable-length kernels avoid both, on GPUs only. ``sdpa_per_example``
does what they do, plainly: causal SDPA over each example's slice, without a mask, so attention costs
the sum of the squares of the example lengths (halved), not the square of their sum. A row whose examples share
their first tokens once (``shared_prefix.py``) has each example attend to that one copy as well. Anything else
(padded batches, generation with a cache) goes to transformers' SDPA function unchanged.

It is added through ``AttentionInterface``, transformers' documented way to plug in an attention
function, under the name ``PER_EXAMPLE_SDPA``, with SDPA's mask builder.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from togi.train.library_adapters import attention_implementation
from togi.train.shared_prefix import SHARED_PREFIX

PER_EXAMPLE_SDPA = "togi_sdpa_per_example"


def sdpa_per_example(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
                     cu_seq_lens_q: torch.Tensor | None = None, cu_seq_lens_k: torch.Tensor | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Query, key and value are (batch, heads, length, head_dim); the output is (batch, length, heads, head_dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    shared = kwargs.pop(SHARED_PREFIX, None)
    padding_free = (cu_seq_lens_q is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
                    and (cu_seq_lens_k is None or torch.equal(cu_seq_lens_q, cu_seq_lens_k)))
    if not padding_free:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    if not shared:
        outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], None, **kwargs)[0]
                   for start, end in zip(bounds, bounds[1:])]
        return torch.cat(outputs, dim=1), None
    # A row from shared_prefix.share_common_prefix: the prefix, then each example's remainder, which attends to
    # the prefix and causally to itself (query i of a remainder sees keys up to prefix + i).
    outputs = [sdpa_attention_forward(module, query[:, :, :shared], key[:, :, :shared], value[:, :, :shared], None, **kwargs)[0]]
    for start, end in zip(bounds[1:], bounds[2:]):
        length = end - start
        sees = torch.ones(length, shared + length, dtype=torch.bool, device=query.device).tril(diagonal=shared)[None, None]
        outputs.append(sdpa_attention_forward(module, query[:, :, start:end], torch.cat([key[:, :, :shared], key[:, :, start:end]], dim=2),
                                              torch.cat([value[:, :, :shared], value[:, :, start:end]], dim=2), sees, **kwargs)[0])
    return torch.cat(outputs, dim=1), None


def register_per_example_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(PER_EXAMPLE_SDPA, sdpa_per_example)
    AttentionMaskInterface.register(PER_EXAMPLE_SDPA, sdpa_mask)


@contextmanager
def per_example_attention(model: nn.Module) -> Iterator[None]:
    """Train ``model`` (a transformers model, or a PEFT model around one) with ``sdpa_per_example`` when it uses
    SDPA; its own implementation is back when the block ends, so saved configs and later generation never name
    togi's function."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = attention_implementation(causal_lm)
    if before != "sdpa":
        yield
        return
    register_per_example_attention()
    causal_lm.set_attn_implementation(PER_EXAMPLE_SDPA)
    try:
        yield
    finally:
        causal_lm.set_attn_implementation(before)
