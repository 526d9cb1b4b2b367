"""A batch trained in passes of bounded tokens is the same step as the whole batch at once.

``training.micro_batch_tokens`` (``togi.train.micro_batches``) cuts a padding-free batch at example boundaries
and runs the forward and backward pass of each piece in turn, to hold fewer activations at a time. The pieces
must hold every token once with their own example bounds, and the loss and gradients must equal the whole
batch's within float32 tolerance, in a training run too. Memory and speed are measured in ``benchmarks/``.
"""

from __future__ import annotations

import json

import pytest
import torch

from togi.config import CPU_MICRO_BATCH_TOKENS, load_config
from togi.train import train
from togi.train.loss import compact_lm_loss
from togi.train.micro_batches import example_groups, split_padding_free_batch

from conftest import distinct_chats, tiny_lora_model, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

LENGTHS = (23, 7, 15, 30, 4)


def padding_free_batch(weights: bool = False) -> dict[str, torch.Tensor]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    generator = torch.Generator().manual_seed(0)
    examples = []
    for length in LENGTHS:
        ids = torch.randint(3, 390, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2:]})
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    if weights:
        batch["label_weights"] = torch.rand(batch["input_ids"].shape, generator=generator) + 0.5
    return batch


def test_examples_are_grouped_in_order_within_the_budget_and_a_longer_one_stands_alone():
    assert example_groups([23, 7, 15, 30, 4], 30) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert example_groups([23, 7, 15, 30, 4], 45) == [(0, 3), (3, 5)]
    assert example_groups([50, 10], 20) == [(0, 1), (1, 2)]
    assert example_groups([5, 5], 100) == [(0, 2)]
    assert example_groups([], 10) == []


def test_a_prefix_the_examples_will_share_counts_once_per_pass():
    # 12 shared tokens: 23 and 15 take 12 + 11 + 3 = 26 tokens once the prefix is shared, 38 without
    assert example_groups([23, 15, 20, 30], 30, shared_prefix=12) == [(0, 2), (2, 3), (3, 4)]
    assert example_groups([23, 15, 20, 30], 30) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_the_pieces_hold_every_token_once_with_their_own_example_bounds():
    batch = padding_free_batch(weights=True)
    pieces = split_padding_free_batch(batch, 30)
    assert [piece["input_ids"].shape[1] for piece in pieces] == [30, 15, 30, 4]
    for key in ("input_ids", "labels", "position_ids", "label_weights"):
        assert torch.equal(torch.cat([piece[key] for piece in pieces], dim=1), batch[key]), key
    first = pieces[0]
    assert first["cu_seq_lens_q"].tolist() == first["cu_seq_lens_k"].tolist() == [0, 23, 30]
    assert first["max_length_q"] == first["max_length_k"] == 23
    assert first["seq_idx"].tolist() == [[0] * 23 + [1] * 7]
    assert [piece["position_ids"][0, 0].item() for piece in pieces] == [0, 0, 0, 0]
    assert pieces[1]["seq_idx"].tolist() == [[0] * 15]


def test_a_batch_that_fits_or_is_not_a_single_padding_free_row_is_left_whole():
    batch = padding_free_batch()
    assert split_padding_free_batch(batch, 1000) == [batch]
    padded = {"input_ids": torch.zeros(2, 40, dtype=torch.long), "labels": torch.zeros(2, 40, dtype=torch.long),
              "attention_mask": torch.ones(2, 40, dtype=torch.long)}
    assert split_padding_free_batch(padded, 10) == [padded]
    unknown = {**batch, "pixel_values": torch.zeros(1)}
    assert split_padding_free_batch(unknown, 10) == [unknown]


@pytest.mark.parametrize("weights", [False, True])
def test_the_pieces_loss_and_gradients_add_up_to_the_whole_batchs(tokenizer, weights):
    model = tiny_lora_model(tokenizer)
    model.train()
    batch = padding_free_batch(weights)
    labelled = int((batch["labels"][:, 1:] != -100).sum())

    def loss_and_gradients(pieces):
        model.zero_grad()
        total = 0.0
        for piece in pieces:
            piece = dict(piece)
            label_weights = piece.pop("label_weights", None)
            loss = compact_lm_loss(model, piece, labelled, label_weights=label_weights).loss
            loss.backward()
            total += loss.item()
        return total, {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    whole_loss, whole = loss_and_gradients([batch])
    pieces = split_padding_free_batch(batch, 30)
    assert len(pieces) == 4
    pieces_loss, summed = loss_and_gradients(pieces)
    assert pieces_loss == pytest.approx(whole_loss, rel=1e-5)
    for name, gradient in whole.items():
        torch.testing.assert_close(summed[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def run_lora(tmp_path, model_dir, train_file, micro_batch_tokens: str):
    config = load_config(None, [
        f"model={model_dir}", "method=lora", "lora.dropout=0", f"data.train_file={train_file}", f"output_dir={tmp_path / micro_batch_tokens}",
        "training.max_steps=4", "training.batch_size=6", "training.gradient_accumulation=2", "training.learning_rate=1e-2",
        "data.val_ratio=0", "monitoring.samples=0", f"training.micro_batch_tokens={micro_batch_tokens}",
    ])
    messages: list[str] = []
    result = train(config, log=messages.append)
    losses = [json.loads(line)["train_loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if "train_loss" in json.loads(line)]
    return result, losses, messages


def test_a_run_split_into_small_passes_trains_as_the_unsplit_run(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    train_file = write_jsonl(tmp_path / "train.jsonl", distinct_chats(48))
    whole, whole_losses, _ = run_lora(tmp_path, tiny_model_dir, train_file, "null")
    split, split_losses, messages = run_lora(tmp_path, tiny_model_dir, train_file, "48")
    assert "each forward and backward pass takes at most 48 tokens of a batch (training.micro_batch_tokens)" in messages
    assert split_losses == pytest.approx(whole_losses, rel=1e-4) and len(split_losses) == 4
    whole_adapter = load_file(whole.output_dir / "adapter_model.safetensors")
    split_adapter = load_file(split.output_dir / "adapter_model.safetensors")
    for name, weight in whole_adapter.items():
        torch.testing.assert_close(split_adapter[name], weight, rtol=1e-3, atol=1e-5, msg=name)


def test_auto_splits_on_a_cpu_only_and_a_non_positive_budget_is_refused():
    from togi.config import ConfigError
    from togi.models.device import DevicePlan
    from togi.train.sft import _micro_batch_tokens

    config = load_config(None, ["model=x", "data.train_file=a.jsonl"])
    assert config.training.micro_batch_tokens == "auto"
    cpu, bf16_cpu, cuda = DevicePlan("cpu", "fp32", "test"), DevicePlan("cpu", "bf16", "test"), DevicePlan("cuda", "bf16", "test")
    assert _micro_batch_tokens(config, cpu, padding_free=True) == CPU_MICRO_BATCH_TOKENS["fp32"] == 512
    assert _micro_batch_tokens(config, bf16_cpu, padding_free=True) == CPU_MICRO_BATCH_TOKENS["bf16"] == 1024
    assert _micro_batch_tokens(config, cuda, padding_free=True) is None
    assert _micro_batch_tokens(config, cpu, padding_free=False) is None
    with pytest.raises(ConfigError, match="training.micro_batch_tokens: 0 tokens: a pass needs at least one token"):
        load_config(None, ["model=x", "data.train_file=a.jsonl", "training.micro_batch_tokens=0"])
    with pytest.raises(ConfigError, match="'lots' is not a number of tokens: use a number such as 1024, auto, or null"):
        load_config(None, ["model=x", "data.train_file=a.jsonl", "training.micro_batch_tokens=lots"])
