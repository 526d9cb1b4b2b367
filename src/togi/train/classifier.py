"""The model a classification run trains: a pretrained model with a new sequence-classification head.

The head is what the checkpoint lacks: the parameters ``from_pretrained`` had to initialise (``classifier``
on BERT, ``score`` on Llama), found from its loading report rather than from architecture names. Which
parameters train:

- ``freeze`` (``classification.freeze_backbone``): the head alone. When the head's output is the model's
  output (encoders: the head reads one pooled vector), the frozen model's features are computed once, in
  eval mode, and the head trains on them, as the seeds' transfer-learning recipe does: an epoch then costs
  a pass through a linear layer, not through the model. Otherwise (decoders pick the last token's logits
  after the head) every step runs the frozen model.
- ``lora``: PEFT adapters (task type SEQ_CLS) with the head trained in full (``modules_to_save``).
- ``full``: every parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from togi.config import ConfigError, ConfigIssue, TrainConfig
from togi.models.device import DevicePlan
from togi.models.resolve import ModelSource
from togi.train.methods import lora_config

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def load_classifier(source: ModelSource, plan: DevicePlan, labels: list[str], tokenizer: PreTrainedTokenizerBase) -> tuple[PreTrainedModel, list[str]]:
    """The model with a new head for ``labels``, and the names of the head's modules."""
    from transformers import AutoModelForSequenceClassification

    model, loading = AutoModelForSequenceClassification.from_pretrained(
        source.directory, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
        dtype=plan.weights_dtype, output_loading_info=True)
    head = sorted({key.rsplit(".", 1)[0] for key in loading["missing_keys"]})
    if not head:
        raise ConfigError("recipe", [ConfigIssue("model", f"{source.reference} already has a classification head",
                                                 "start from the base model the classifier was trained from")])
    model.config.pad_token_id = tokenizer.pad_token_id  # decoders classify the last token that is not padding
    return model, head


def apply_classifier_method(model: PreTrainedModel, head: list[str], config: TrainConfig) -> PreTrainedModel:
    """Set which parameters train, as the method says; wrap in a PEFT model for LoRA."""
    if config.method == "lora":
        import peft

        return peft.get_peft_model(model, lora_config(model, config, peft.TaskType.SEQ_CLS, modules_to_save=head))
    for name, parameter in model.named_parameters():
        parameter.requires_grad = config.method == "full" or any(name.startswith(f"{module}.") for module in head)
    return model


class HeadOnFeatures(nn.Module):
    """A classification head trained apart from its model, on the features the frozen model gave it."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        logits = self.head(features.to(next(self.head.parameters()).dtype))
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def head_features(model: PreTrainedModel, head: list[str], dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase,
                  *, batch_size: int, device: str) -> datasets.Dataset | None:
    """``dataset`` as the head's input features and labels, computed once by the frozen model in eval mode;
    None when the head cannot be trained apart (several head modules, or more computation after it)."""
    import datasets
    from transformers import DataCollatorWithPadding

    if len(head) != 1:
        return None
    seen: dict[str, torch.Tensor] = {}
    hook = model.get_submodule(head[0]).register_forward_hook(lambda module, inputs, output: seen.update(input=inputs[0], output=output))
    collate = DataCollatorWithPadding(tokenizer)
    by_length = sorted(range(len(dataset)), key=lambda i: len(dataset[i]["input_ids"]))  # batches of like lengths pad little
    features: list[list[float]] = [[] for _ in by_length]
    model.to(device).eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(by_length), batch_size):
                indices = by_length[start : start + batch_size]
                batch = collate([{key: value for key, value in dataset[i].items() if key != "labels"} for i in indices])
                logits = model(**batch.to(device)).logits
                if seen["input"].dim() != 2 or not torch.equal(seen["output"], logits):
                    return None
                for index, vector in zip(indices, seen["input"].float().cpu().tolist()):
                    features[index] = vector
    finally:
        hook.remove()
        model.train()
    return datasets.Dataset.from_dict({"features": features, "labels": dataset["labels"]})
