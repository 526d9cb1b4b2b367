"""LoRA layers that train faster and hold less on a CPU: one autograd step per layer, a cheaper dropout.

PEFT's LoRA ``Linear`` computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling`` as five separate autograd
operations. On a CPU two things in that make a small model's training step slow and large:

- **The dropout.** ``nn.Dropout`` draws one Bernoulli sample per element with torch's CPU generator (about 5 ns
  an element here) and multiplies by the mask. With dropout on every linear layer, that was a third of a
  SmolLM2-135M step (``benchmarks/RESULTS.md``). ``keep_mask`` below draws 64 random bits at a time and
  compares each 16 of them with a threshold: four elements per draw.
- **The saved copies.** Each LoRA layer keeps its own dropped-out copy of its input for the backward pass, so
  the query, key and value layers keep three copies of the same hidden states, and every layer also keeps its
  mask. ``LoraLinearFunction`` keeps the input itself (one tensor, shared by every layer that reads it) and a
  one-byte mask, and forms the dropped-out input again in the backward pass.

The result is the same function: the same forward values, the same gradients for the same mask. Only the
mask's random stream differs from ``nn.Dropout``'s, and the drop probability is rounded to a multiple of
1/65,536 (0.05 becomes 0.0500031), with the kept values scaled by the exact inverse of the rounded keep rate.

``CpuLoraLinear`` is a PEFT ``lora.Linear`` (its weights, names, saving, merging and everything else are
PEFT's), registered through PEFT's hook for custom LoRA layers (see ``library_adapters.register_custom_lora_layer``) by
``use_cpu_lora_layers``. It takes the fast path only while training plain LoRA with float32 weights on a CPU (in
float32, or in bfloat16 under CPU autocast, as togi trains where the CPU has native bf16), one adapter at a time,
unmerged; anything else (generation, evaluation, DoRA, several adapters, bf16 weights, CUDA) runs PEFT's own
forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from togi.train.library_adapters import register_custom_lora_layer

# Four 16-bit lanes per 64-bit random draw; a lane below the threshold drops its element.
_LANE_VALUES = 2**16
_LANE_MIN = -(2**15)


def keep_rate(dropout: float) -> float:
    """The share of elements ``keep_mask`` keeps for a dropout probability: 1 - p, p rounded to 1/65,536."""
    return 1.0 - round(dropout * _LANE_VALUES) / _LANE_VALUES


def keep_mask(shape: torch.Size, dropout: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean mask of ``shape`` whose elements are True with probability ``keep_rate(dropout)``, drawn from
    torch's default generator (so ``torch.manual_seed`` and activation checkpointing's replay reproduce it)."""
    count = shape.numel()
    draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), 2**63 - 1)
    lanes = draws.view(torch.int16)[:count].view(shape)
    return lanes >= _LANE_MIN + round(dropout * _LANE_VALUES)


class LoraLinearFunction(torch.autograd.Function):
    """``x @ W.T + bias + scaling * ((x * mask / keep) @ A.T) @ B.T`` with its gradients for x, A and B (the base
    weight and bias are frozen). Saves x, the mask and the rank-r activations, and W in ``dtype``.

    The products run in ``dtype``: float32, or bfloat16 under CPU autocast, as autocast runs a linear layer (its
    inputs cast, its output in bfloat16). The gradients come back in the dtypes of x and the parameters."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scaling: float, mask: torch.Tensor | None, keep: float, dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            rows = x.reshape(-1, x.shape[-1]).to(dtype)
            weight_c, lora_a_c, lora_b_c = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            output = rows @ weight_c.t() if bias is None else torch.addmm(bias.to(dtype), rows, weight_c.t())
            # The 1 / keep of the dropout is applied to the rank-r product, a tensor r / in_features the size of x.
            low_rank = (rows if mask is None else rows.mul(mask.view(rows.shape))) @ lora_a_c.t()
            if mask is not None:
                low_rank.mul_(1.0 / keep)
            output.addmm_(low_rank, lora_b_c.t(), alpha=scaling)
        ctx.save_for_backward(x, weight_c, lora_a, lora_b, low_rank, mask)
        ctx.scaling, ctx.keep, ctx.dtype = scaling, keep, dtype
        return output.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        x, weight_c, lora_a, lora_b, low_rank, mask = ctx.saved_tensors
        dtype = ctx.dtype
        rows = x.reshape(-1, x.shape[-1]).to(dtype)
        grad_rows = grad_output.reshape(-1, grad_output.shape[-1]).to(dtype)
        lora_a_c, lora_b_c = lora_a.to(dtype), lora_b.to(dtype)
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[4]:
            grad_b = (grad_rows.t() @ low_rank).mul_(ctx.scaling).to(lora_b.dtype)
        # The gradient at the rank-r product, times the dropout's 1 / keep (again on the small tensor).
        grad_low_rank = (grad_rows @ lora_b_c).mul_(ctx.scaling if mask is None else ctx.scaling / ctx.keep)
        if ctx.needs_input_grad[3]:
            grad_a = (grad_low_rank.t() @ (rows if mask is None else rows.mul(mask.view(rows.shape)))).to(lora_a.dtype)
        if ctx.needs_input_grad[0]:
            grad_lora_input = grad_low_rank @ lora_a_c
            if mask is not None:
                grad_lora_input.mul_(mask.view(rows.shape))
            grad_x = torch.addmm(grad_lora_input, grad_rows, weight_c).view(x.shape).to(x.dtype)
        return grad_x, None, None, grad_a, grad_b, None, None, None, None


def _peft_lora_linear() -> type:
    from peft.tuners.lora.layer import Linear

    return Linear


class CpuLoraLinear(_peft_lora_linear()):  # type: ignore[misc]
    """PEFT's LoRA ``Linear`` with ``LoraLinearFunction`` as its training forward on a CPU (see the module's docstring)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._fast_path_adapter(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base: nn.Linear = self.get_base_layer()
        dropout_module = self.lora_dropout[adapter]
        dropout = dropout_module.p if isinstance(dropout_module, nn.Dropout) else 0.0
        mask = keep_mask(x.shape, dropout, x.device) if dropout > 0 else None
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        return LoraLinearFunction.apply(x, base.weight, base.bias, self.lora_A[adapter].weight, self.lora_B[adapter].weight,
                                        self.scaling[adapter], mask, keep_rate(dropout), dtype)

    def _fast_path_adapter(self, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
        """The one active adapter when the fast path computes exactly what PEFT would, else None."""
        if args or kwargs or not (self.training and torch.is_grad_enabled()) or self.disable_adapters or self.merged:
            return None
        autocast = torch.is_autocast_enabled("cpu")
        if x.device.type != "cpu" or not (x.dtype == torch.float32 or (autocast and x.dtype == torch.get_autocast_dtype("cpu"))):
            return None
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant or self.fan_in_fan_out:
            return None
        adapter = active[0]
        base = self.get_base_layer()
        lora_a, lora_b = self.lora_A[adapter], self.lora_B[adapter]
        if type(base) is not nn.Linear or type(lora_a) is not nn.Linear or type(lora_b) is not nn.Linear:
            return None
        if lora_a.bias is not None or lora_b.bias is not None or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return None
        if any(tensor.dtype != torch.float32 for tensor in (base.weight, lora_a.weight, lora_b.weight)):
            return None
        if not isinstance(self.lora_dropout[adapter], (nn.Dropout, nn.Identity)):
            return None
        return adapter


def use_cpu_lora_layers(peft_config: Any) -> Any:
    """Have PEFT build ``CpuLoraLinear`` for the ``nn.Linear`` layers a LoRA config targets; returns the config."""
    return register_custom_lora_layer(peft_config, nn.Linear, CpuLoraLinear)
