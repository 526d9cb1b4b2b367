"""togi's CPU LoRA layer computes what PEFT's LoRA layer computes, and stays a PEFT layer in every other respect.

``togi.train.cpu_lora.CpuLoraLinear`` replaces the five autograd operations of PEFT's LoRA ``Linear`` with one,
and PEFT's Bernoulli dropout with a cheaper mask. For the same mask, its output and gradients must equal PEFT's
own layer's within float32 tolerance; its masks must keep the advertised share of elements; what is saved must
be an ordinary PEFT adapter; and anything off its path (evaluation, DoRA) must run PEFT's own forward. Speed and
memory are measured in ``benchmarks/``, never asserted here.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from togi.train.cpu_lora import CpuLoraLinear, LoraLinearFunction, keep_mask, keep_rate, use_cpu_lora_layers

from conftest import build_tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


class MaskedDropout(nn.Module):
    """A dropout whose masks are given: PEFT's layer then computes with exactly the masks togi's layer drew."""

    def __init__(self, mask: torch.Tensor, keep: float) -> None:
        super().__init__()
        self.mask, self.keep = mask, keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask / self.keep


def lora_pair(tokenizer, dropout: float):
    """The same tiny Llama with the same LoRA weights (B non-zero), once with PEFT's layers and once with togi's."""
    import peft

    torch.manual_seed(0)
    base = build_tiny_model(tokenizer)

    def config():
        return peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")

    reference = peft.get_peft_model(copy.deepcopy(base), config())
    for name, parameter in reference.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(parameter, std=0.1)
    fast = peft.get_peft_model(copy.deepcopy(base), use_cpu_lora_layers(config()))
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, 390, (2, 17), generator=generator)
    return {"input_ids": input_ids, "labels": input_ids.clone()}


def loss_and_gradients(model) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    loss = model(**batch()).loss
    loss.backward()
    return loss.detach(), {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.requires_grad}


def assert_same(reference, fast) -> None:
    reference_loss, reference_gradients = loss_and_gradients(reference)
    fast_loss, fast_gradients = loss_and_gradients(fast)
    torch.testing.assert_close(fast_loss, reference_loss, rtol=1e-5, atol=1e-6)
    assert fast_gradients.keys() == reference_gradients.keys()
    for name, gradient in reference_gradients.items():
        torch.testing.assert_close(fast_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_every_targeted_linear_layer_becomes_togis_layer_and_stays_a_peft_lora_layer(tokenizer):
    from peft.tuners.lora.layer import Linear

    reference, fast = lora_pair(tokenizer, dropout=0.0)
    fast_layers = [module for module in fast.modules() if isinstance(module, CpuLoraLinear)]
    assert len(fast_layers) == len([module for module in reference.modules() if isinstance(module, Linear)]) > 0
    assert all(isinstance(module, Linear) for module in fast_layers)


def test_without_dropout_the_loss_and_every_gradient_equal_pefts(tokenizer):
    assert_same(*lora_pair(tokenizer, dropout=0.0))


def test_with_dropout_the_loss_and_every_gradient_equal_pefts_for_the_same_masks(tokenizer):
    reference, fast = lora_pair(tokenizer, dropout=0.1)
    inputs = {}  # each fast layer's input shape, in call order, to draw the same masks again for PEFT's layers

    def record_shape(name):
        def hook(module, args):
            inputs[name] = args[0].shape
        return hook

    hooks = [module.register_forward_pre_hook(record_shape(name)) for name, module in fast.named_modules() if isinstance(module, CpuLoraLinear)]
    torch.manual_seed(7)
    fast_loss, fast_gradients = loss_and_gradients(fast)
    for hook in hooks:
        hook.remove()
    torch.manual_seed(7)
    modules = dict(reference.named_modules())
    for name, shape in inputs.items():
        modules[name].lora_dropout["default"] = MaskedDropout(keep_mask(shape, 0.1), keep_rate(0.1))
    reference_loss, reference_gradients = loss_and_gradients(reference)
    torch.testing.assert_close(fast_loss, reference_loss, rtol=1e-5, atol=1e-6)
    for name, gradient in reference_gradients.items():
        torch.testing.assert_close(fast_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("dropout", [0.05, 0.1, 0.5])
def test_a_mask_keeps_one_minus_the_dropout_and_is_reproducible_from_the_seed(dropout):
    torch.manual_seed(3)
    mask = keep_mask(torch.Size([1000, 999]), dropout)
    assert mask.dtype == torch.bool and mask.shape == (1000, 999)
    assert abs(keep_rate(dropout) - (1 - dropout)) <= 1 / 2**16
    assert abs(mask.float().mean().item() - keep_rate(dropout)) < 0.002  # about 4 standard deviations
    torch.manual_seed(3)
    assert torch.equal(keep_mask(torch.Size([1000, 999]), dropout), mask)


def test_the_function_saves_the_input_itself_and_a_one_byte_mask():
    """Layers that read the same hidden states (query, key, value) keep one copy of them between them."""
    x = torch.randn(5, 8, requires_grad=True)
    weight, lora_a = torch.randn(6, 8), torch.randn(2, 8, requires_grad=True)
    lora_b = torch.randn(6, 2, requires_grad=True)
    mask = keep_mask(x.shape, 0.2)
    output = LoraLinearFunction.apply(x, weight, None, lora_a, lora_b, 2.0, mask, keep_rate(0.2), torch.float32)
    saved = output.grad_fn.saved_tensors
    assert any(tensor.data_ptr() == x.data_ptr() for tensor in saved)
    assert [tensor.dtype for tensor in saved if tensor.shape == x.shape] == [torch.float32, torch.bool]


def test_evaluation_and_dora_run_pefts_own_forward(tokenizer, monkeypatch):
    import peft

    reference, fast = lora_pair(tokenizer, dropout=0.1)
    calls = []
    monkeypatch.setattr(LoraLinearFunction, "apply", lambda *args: calls.append(args) or pytest.fail("fast path taken"))
    fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(**batch()).logits, reference.eval()(**batch()).logits)
    dora = peft.get_peft_model(build_tiny_model(tokenizer), use_cpu_lora_layers(peft.LoraConfig(
        r=4, lora_alpha=8, use_dora=True, target_modules="all-linear", task_type="CAUSAL_LM")))
    dora.train()
    dora(**batch()).loss.backward()
    assert calls == []


def test_the_saved_adapter_is_a_plain_peft_adapter_that_peft_loads(tokenizer, tmp_path):
    import peft

    reference, fast = lora_pair(tokenizer, dropout=0.05)
    fast.save_pretrained(tmp_path / "adapter")
    saved_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert not any("custom" in key for key in saved_config)
    torch.manual_seed(0)  # the base lora_pair built
    loaded = peft.PeftModel.from_pretrained(build_tiny_model(tokenizer), tmp_path / "adapter")
    assert not any(isinstance(module, CpuLoraLinear) for module in loaded.modules())
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch()).logits, fast.eval()(**batch()).logits)


@pytest.mark.parametrize("method, expected", [("lora", True), ("dora", False)])
def test_togi_trains_lora_on_a_cpu_with_its_layer_and_dora_with_pefts(tokenizer, tiny_model_dir, method, expected):
    from togi.config import load_config
    from togi.train.methods import apply_method

    config = load_config(None, [f"model={tiny_model_dir}", f"method={method}", "data.train_file=unused.jsonl"])
    model = apply_method(build_tiny_model(tokenizer), config, tiny_model_dir)
    assert any(isinstance(module, CpuLoraLinear) for module in model.modules()) is expected


def test_under_cpu_autocast_it_computes_in_bfloat16_as_pefts_layer_does(tokenizer, monkeypatch):
    """Where the CPU has native bf16, togi trains with float32 weights under bf16 autocast."""
    reference, fast = lora_pair(tokenizer, dropout=0.0)
    dtypes = []
    apply = LoraLinearFunction.apply
    monkeypatch.setattr(LoraLinearFunction, "apply", lambda *args: dtypes.append(args[-1]) or apply(*args))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference_loss, reference_gradients = loss_and_gradients(reference)
        fast_loss, fast_gradients = loss_and_gradients(fast)
    assert dtypes and set(dtypes) == {torch.bfloat16}
    torch.testing.assert_close(fast_loss, reference_loss, rtol=2e-2, atol=2e-2)
    for name, gradient in reference_gradients.items():
        assert fast_gradients[name].dtype == torch.float32
        relative = (fast_gradients[name] - gradient).norm() / gradient.norm()
        assert relative < 0.05, (name, float(relative))
