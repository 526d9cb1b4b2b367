"""togi/train/library_adapters.py holds togi's only reaches past the public API of transformers, TRL and PEFT.
Each is exercised here against the installed libraries, so an upgrade that changes one fails here, naming it."""

from __future__ import annotations

import importlib.metadata

import torch

from conftest import build_tiny_model
from togi.train.library_adapters import CHECKED_VERSIONS, TrainSamplerHook, attention_implementation, register_custom_lora_layer


def _recheck(access: str) -> str:
    installed = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in CHECKED_VERSIONS)
    checked = ", ".join(f"{name} {version}" for name, version in CHECKED_VERSIONS.items())
    return (f"{access} changed under togi (installed: {installed}; checked against: {checked}): "
            "update togi/train/library_adapters.py and the versions it names")


def test_the_attention_implementation_reads_what_set_attn_implementation_set(tokenizer):
    model = build_tiny_model(tokenizer)
    for implementation in ("eager", "sdpa"):
        model.set_attn_implementation(implementation)
        assert attention_implementation(model) == implementation, _recheck("transformers' config._attn_implementation")


class _Order(torch.utils.data.Sampler[int]):
    def __init__(self, order: list[int]) -> None:
        self.order = order

    def __iter__(self):
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def _first_epoch(tmp_path, sampler) -> list[int]:
    from transformers import Trainer, TrainingArguments

    class Probe(TrainSamplerHook, Trainer):
        def train_sampler(self, dataset):
            return sampler

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=2, report_to=[],
                             remove_unused_columns=False, seed=0)
    trainer = Probe(model=torch.nn.Linear(1, 1), args=args, train_dataset=[{"x": index} for index in range(6)])
    return [int(x) for batch in trainer.get_train_dataloader() for x in batch["x"]]


def test_train_sampler_decides_the_order_of_the_training_examples(tmp_path):
    order = [5, 3, 1, 0, 2, 4]
    assert _first_epoch(tmp_path, _Order(order)) == order, _recheck("transformers' Trainer._get_train_sampler")


def test_without_a_train_sampler_the_trainer_keeps_its_own_order(tmp_path):
    assert sorted(_first_epoch(tmp_path, None)) == list(range(6)), _recheck("transformers' Trainer._get_train_sampler")


def test_a_registered_custom_lora_layer_is_built_and_not_saved_with_the_adapter_config(tokenizer):
    import peft
    from peft.tuners.lora.layer import Linear

    class Custom(Linear):
        pass

    config = register_custom_lora_layer(peft.LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"), torch.nn.Linear, Custom)
    model = peft.get_peft_model(build_tiny_model(tokenizer), config)
    assert any(type(module) is Custom for module in model.modules()), _recheck("PEFT's LoraConfig._register_custom_module")
    assert "_custom_modules" not in config.to_dict(), _recheck("PEFT's LoraConfig._register_custom_module (now saved)")
