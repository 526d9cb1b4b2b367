"""The CPU fast path computes the same loss and gradients as the plain path.

The fast path (``togi.train.loss`` and ``togi.train.attention``) applies the LM head only at labelled
positions and trains padding-free batches with attention inside each example. On a fixed batch of
examples of different lengths, with prompt tokens unlabelled, its loss and gradients must equal
transformers' own loss on the padded batch, within float32 tolerance. Speed is measured in
``benchmarks/``, never asserted here.
"""

from __future__ import annotations

import pytest
import torch

from togi.train.attention import PER_EXAMPLE_SDPA, per_example_attention
from togi.train.library_adapters import attention_implementation
from togi.train.loss import compact_lm_loss, supports_compact_loss

from conftest import build_tiny_model, tiny_lora_model

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

IGNORE = -100


def fixed_examples() -> list[dict[str, list[int]]]:
    """Three examples of different lengths; the first tokens of each (the prompt) carry no loss."""
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length, prompt in ((23, 9), (7, 3), (15, 14)):
        ids = torch.randint(3, 390, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE] * prompt + ids[prompt:]})
    return examples


def padded_batch(examples, pad_token_id: int) -> dict[str, torch.Tensor]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id)(examples)


def padding_free_batch(examples, pad_token_id: int) -> dict[str, torch.Tensor]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=pad_token_id, padding_free=True)(examples)


def plain_loss_and_gradients(model, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """transformers' own loss: full logits, shifted labels, mean over labelled positions."""
    model.zero_grad()
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def fast_loss_and_gradients(model, batch, num_items_in_batch=None) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = compact_lm_loss(model, batch, num_items_in_batch).loss
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def assert_same(expected, actual) -> None:
    expected_loss, expected_gradients = expected
    actual_loss, actual_gradients = actual
    assert actual_loss == pytest.approx(expected_loss, rel=1e-5)
    assert expected_gradients.keys() == actual_gradients.keys()
    for name, gradient in expected_gradients.items():
        assert torch.allclose(actual_gradients[name], gradient, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("method", ["lora", "full"])
def test_labelled_positions_only_loss_equals_the_full_logits_loss(tokenizer, method):
    model = tiny_lora_model(tokenizer) if method == "lora" else build_tiny_model(tokenizer)
    assert supports_compact_loss(model)
    batch = padded_batch(fixed_examples(), tokenizer.pad_token_id)
    assert (batch["labels"] == IGNORE).float().mean() > 0.3  # prompts and padding: many positions carry no loss
    assert_same(plain_loss_and_gradients(model, batch), fast_loss_and_gradients(model, batch))


@pytest.mark.parametrize("method", ["lora", "full"])
def test_padding_free_batch_with_per_example_attention_equals_the_padded_batch(tokenizer, method):
    model = tiny_lora_model(tokenizer) if method == "lora" else build_tiny_model(tokenizer)
    examples = fixed_examples()
    expected = plain_loss_and_gradients(model, padded_batch(examples, tokenizer.pad_token_id))
    with per_example_attention(model):
        assert attention_implementation(model) == PER_EXAMPLE_SDPA
        actual = fast_loss_and_gradients(model, padding_free_batch(examples, tokenizer.pad_token_id))
    assert_same(expected, actual)
    assert attention_implementation(model) == "sdpa"  # restored


def test_gradient_accumulation_divides_by_the_tokens_of_all_micro_batches(tokenizer):
    model = build_tiny_model(tokenizer)
    batch = padded_batch(fixed_examples(), tokenizer.pad_token_id)
    labelled = int((batch["labels"][:, 1:] != IGNORE).sum())
    alone, _ = fast_loss_and_gradients(model, batch)
    accumulated, _ = fast_loss_and_gradients(model, batch, num_items_in_batch=torch.tensor(3 * labelled))
    assert accumulated == pytest.approx(alone / 3, rel=1e-6)


def test_the_trainer_loss_equals_trls_own_on_the_same_batch(tmp_path, tokenizer):
    """togi's compute_loss against TRL's SFTTrainer.compute_loss, on one batch from the trainer's own collator,
    with the metrics TRL logs (token accuracy, real tokens seen) logged the same."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from togi.train.sft import _trainer_class

    examples = fixed_examples()
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, padding_free=True, max_length=None, report_to=[],
                     per_device_train_batch_size=3, gradient_checkpointing=False)
    trainer = _trainer_class(SFTTrainer)(model=tiny_lora_model(tokenizer), args=args, processing_class=tokenizer,
                                         train_dataset=datasets.Dataset.from_list(examples))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with per_example_attention(trainer.model):
        fast = trainer.compute_loss(trainer.model, dict(batch))
    fast.backward()
    trainer.log({})
    fast_logged = trainer.state.log_history[-1]
    fast_gradients = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.model.zero_grad()
    plain = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
    plain.backward()
    trainer.log({})
    plain_logged = trainer.state.log_history[-1]
    assert fast.item() == pytest.approx(plain.item(), rel=1e-5)
    for name, parameter in trainer.model.named_parameters():
        if parameter.requires_grad:
            assert torch.allclose(fast_gradients[name], parameter.grad, rtol=1e-4, atol=1e-6), name
    real_tokens = sum(len(example["input_ids"]) for example in examples)
    assert fast_logged["num_tokens"] == plain_logged["num_tokens"] == real_tokens  # every real token counted, once
    assert fast_logged["mean_token_accuracy"] == pytest.approx(plain_logged["mean_token_accuracy"])


def test_the_thread_count_is_restored_however_training_ends():
    from togi.train.threads import thread_count_restored

    before = torch.get_num_threads()
    with pytest.raises(MemoryError):
        with thread_count_restored():
            torch.set_num_threads(before + 1)  # as the governor does at a step
            raise MemoryError("out of memory")
    assert torch.get_num_threads() == before


def test_cpu_threads_fit_the_cores_other_processes_leave_free():
    from togi.train.threads import CpuUsage, threads_for

    assert threads_for(2.0, most=2) == 2 and threads_for(1.8, most=2) == 2  # an idle machine keeps every thread
    assert threads_for(1.7, most=2) == 1 and threads_for(1.0, most=2) == 1  # a core shared with a busy process does not count
    assert threads_for(0.1, most=2) == 1 and threads_for(15.9, most=4) == 4  # at least one, never more than torch started with
    usage = CpuUsage()
    sum(range(10**6))
    others = usage.others_since_last()
    assert others is None or 0 <= others <= usage.cores
