"""The only places where togi reaches into transformers, TRL or PEFT past their public API.

Everything else uses public hooks (``TrainerCallback``, ``Trainer.log``, ``compute_loss``,
``config.name_or_path``, ``set_attn_implementation``). Each access below has no public counterpart in
the versions this module was checked against:

    transformers 5.24.0, trl 1.16.0, peft 0.21.2

``tests/test_library_adapters.py`` exercises each one against the installed libraries and says which
access broke when an upgrade changes them; re-check this module (and update the versions above) then.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Sampler

CHECKED_VERSIONS = {"transformers": "5.24.0", "trl": "1.16.0", "peft": "0.21.2"}


def attention_implementation(model: Any) -> str | None:
    """The attention implementation a transformers model runs with ("sdpa", "eager", ...).

    transformers keeps it in ``config._attn_implementation`` (a property over the config's internal field)
    and offers ``set_attn_implementation`` to change it, but no public getter."""
    return model.config._attn_implementation


class TrainSamplerHook:
    """A mixin for a transformers ``Trainer`` (TRL's trainers included) whose ``train_sampler(dataset)`` decides
    the order of the training examples; where it returns None, the Trainer's own order is kept.

    ``Trainer.get_train_dataloader`` asks ``Trainer._get_train_sampler`` for its sampler and has no public
    option for a custom one; overriding the whole dataloader would copy transformers' collator, worker and
    accelerator set-up instead. TRL's own trainers (GRPO, KTO) override ``_get_train_sampler`` the same way."""

    def train_sampler(self, dataset: Any) -> Sampler[int] | None:
        return None

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        sampler = self.train_sampler(train_dataset if train_dataset is not None else self.train_dataset)  # type: ignore[attr-defined]
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)  # type: ignore[misc]


def register_custom_lora_layer(peft_config: Any, base_type: type, layer_class: type) -> Any:
    """Have PEFT build ``layer_class`` (a subclass of one of PEFT's LoRA layers) for the target layers of type
    ``base_type`` that ``peft_config`` (a ``LoraConfig``) adapts; returns the config.

    PEFT's hook for custom LoRA layers is ``LoraConfig._register_custom_module``, documented in its developer guide
    ("Custom models") as experimental, with an underscore name. It is not saved with the adapter's config, so
    what is saved loads in plain PEFT."""
    peft_config._register_custom_module({base_type: layer_class})
    return peft_config
