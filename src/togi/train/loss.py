"""The language-model loss on a CPU, computed only where it is taken.

A small model's LM head is a large share of its work: SmolLM2-135M's is 49,152 x 576, about a fifth
of the multiply-adds per token, and its logits are the largest tensors of a training step. Prompt and
padding tokens carry no loss (label -100), so their logits are wasted. TRL's SFTTrainer already skips
the full logits with a chunked LM head, but projects only the labelled positions on CUDA alone; on a
CPU it projects every position, computes the projection twice (forward and backward), and its torch
fallback copies every tile several times.

``compact_lm_loss`` runs the model's backbone, keeps the hidden states of the positions that have a
label, and applies the LM head to those only, in chunks of rows. Each chunk's gradient is computed
while its logits are at hand (as Liger's fused linear cross-entropy does on GPUs), so neither the
logits nor their softmax outlive the chunk and the projection is never recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

IGNORE_INDEX = -100
CHUNK_BYTES = 2**27  # float32 logits per chunk of rows: 128 MiB, about 680 rows of a 49,152-token vocabulary
# Config attributes of models whose logits are scaled or capped after the LM head; those keep TRL's loss.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets`` (each row's term times its entry of
    ``row_weights`` when given), and the number of rows whose target is the top prediction. The gradients are
    computed in the forward, chunk by chunk."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                row_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        rows = max(1, CHUNK_BYTES // (4 * weight.shape[0]))
        for start in range(0, hidden.shape[0], rows):
            chunk, chunk_targets = hidden[start : start + rows], targets[start : start + rows]
            chunk_weights = None if row_weights is None else row_weights[start : start + rows].float()
            logits = (chunk @ weight.t()).float()
            correct += (logits.argmax(dim=-1) == chunk_targets).sum()
            log_normalizer = torch.logsumexp(logits, dim=-1)
            losses = log_normalizer - logits.gather(1, chunk_targets.unsqueeze(1)).squeeze(1)
            total += (losses if chunk_weights is None else losses * chunk_weights).sum()
            if grad_hidden is None and grad_weight is None:
                continue
            # d(loss) / d(logits) = softmax(logits) - one_hot(target), formed in place of the logits
            grad_logits = logits.sub_(log_normalizer.unsqueeze(1)).exp_()
            grad_logits[torch.arange(len(chunk_targets), device=logits.device), chunk_targets] -= 1
            if chunk_weights is not None:
                grad_logits.mul_(chunk_weights.unsqueeze(1))
            grad_logits = grad_logits.to(chunk.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + rows] = grad_logits @ weight.to(chunk.dtype)
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t().float(), chunk.float())
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor, grad_correct: Any) -> tuple[Any, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_total.to(grad_hidden.dtype) if grad_hidden is not None else None,
            (grad_weight * grad_total).to(ctx.weight_dtype) if grad_weight is not None else None,
            None,
            None,
        )


@dataclass
class LossParts:
    loss: torch.Tensor
    labelled: int  # positions that carry a label
    correct: int  # of those, the ones whose label is the model's top prediction


def unwrapped_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (adapters live in its layers), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_compact_loss(model: nn.Module) -> bool:
    """True for a causal LM whose logits are a plain bias-free projection of the backbone's last hidden
    state: no prompt-learning virtual tokens, no logit scaling or soft-capping."""
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and peft_config.is_prompt_learning:
        return False
    causal_lm = unwrapped_causal_lm(model)
    head = causal_lm.get_output_embeddings()
    config = causal_lm.config.get_text_config()
    return (type(head) is nn.Linear and head.bias is None  # a PEFT-wrapped head is not a plain Linear
            and not any(getattr(config, name, None) is not None for name in _LOGIT_TRANSFORMS)
            and not getattr(config, "output_router_logits", False))


def compact_lm_loss(model: nn.Module, inputs: dict[str, Any], num_items_in_batch: int | torch.Tensor | None = None,
                    label_weights: torch.Tensor | None = None) -> LossParts:
    """Next-token cross-entropy over the labelled positions, equal to the model's own loss: summed, then divided
    by ``num_items_in_batch`` (the labelled tokens of all accumulated micro-batches) or by this batch's count.
    ``label_weights`` (the shape of the labels) multiply each position's term (``data.label_loss_weight``); the
    divisor stays the count of labelled positions."""
    causal_lm = unwrapped_causal_lm(model)
    backbone_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    hidden = causal_lm.get_decoder()(**backbone_inputs, use_cache=False).last_hidden_state
    next_labels = inputs["labels"][:, 1:]
    labelled = next_labels != IGNORE_INDEX
    head = causal_lm.get_output_embeddings()
    row_weights = None if label_weights is None else label_weights[:, 1:][labelled]
    total, correct = LinearCrossEntropy.apply(hidden[:, :-1][labelled], head.weight, next_labels[labelled], row_weights)
    count = int(labelled.sum())
    divisor = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
    return LossParts(loss=total / torch.as_tensor(divisor, device=total.device).clamp(min=1), labelled=count, correct=int(correct))
