"""Models read from GGUF files by transformers (``from_pretrained(..., gguf_file=...)``).

Used by the embedded model's one-time conversion and by ``load_causal_lm``; it imports nothing else of
togi, so neither has to import the other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def dequantized_copy(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """A plain model with the weights of one loaded from GGUF. The GGUF loader marks its (already float)
    model as quantized, which makes it refuse training and ``save_pretrained``."""
    from transformers import AutoModelForCausalLM

    config = model.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain
