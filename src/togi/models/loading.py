"""Loading causal language models for training and generation, with the precision the device plan chose."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from togi.models.device import DevicePlan
from togi.models.gguf import dequantized_copy
from togi.models.resolve import ModelSource

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_causal_lm(source: ModelSource, plan: DevicePlan, *, quantize_4bit: bool = False) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": plan.weights_dtype, "attn_implementation": "sdpa"}
    if quantize_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": 0}
    if source.gguf_file:
        model = AutoModelForCausalLM.from_pretrained(source.directory, gguf_file=source.gguf_file, **kwargs)
        return dequantized_copy(model, plan.weights_dtype)
    return AutoModelForCausalLM.from_pretrained(source.directory, **kwargs)
