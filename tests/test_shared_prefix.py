"""A pass computes the prefix its examples share once, and that is the same computation as one copy per example.

``togi.train.shared_prefix.share_common_prefix`` rewrites a padding-free row so that the examples' common
unlabelled beginning (a system prompt) appears once; togi's per-example attention lets each example's remainder
attend to it. The loss and every gradient must equal those of the row with a copy per example, within float32
tolerance, and a prefix must never be shared where it would change a label's context. Speed is measured in
``benchmarks/``.
"""

from __future__ import annotations

import json

import pytest
import torch

from togi.config import load_config
from togi.train import train
from togi.train.attention import per_example_attention
from togi.train.loss import compact_lm_loss
from togi.train.shared_prefix import MIN_SHARED_PREFIX, SHARED_PREFIX, real_tokens, share_common_prefix, shareable_prefix_length

from conftest import chat, tiny_lora_model, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

PREFIX = list(range(10, 22))  # 12 tokens every example begins with


def collate(examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)


def examples_with_prefix(prefix: list[int] = PREFIX, prompt: int = 3) -> list[dict[str, list[int]]]:
    """Four examples: the prefix, ``prompt`` more unlabelled tokens of their own, then a labelled answer."""
    generator = torch.Generator().manual_seed(0)
    examples = []
    for answer in (5, 9, 2, 7):
        own = torch.randint(100, 390, (prompt + answer,), generator=generator).tolist()
        ids = prefix + own
        examples.append({"input_ids": ids, "labels": [-100] * (len(prefix) + prompt) + ids[len(prefix) + prompt:]})
    return examples


def test_the_prefix_appears_once_and_each_remainder_keeps_its_own_positions():
    batch = collate(examples_with_prefix())
    shared = share_common_prefix(batch)
    assert shared[SHARED_PREFIX] == len(PREFIX)
    assert shared["input_ids"].shape[1] == batch["input_ids"].shape[1] - 3 * len(PREFIX)
    assert shared["input_ids"][0, : len(PREFIX)].tolist() == PREFIX
    lengths = [len(PREFIX) + 3 + answer for answer in (5, 9, 2, 7)]
    assert shared["cu_seq_lens_q"].tolist() == [0, 12, 20, 32, 37, 47] == shared["cu_seq_lens_k"].tolist()
    assert shared["position_ids"][0, 12:20].tolist() == list(range(12, 20))  # after the prefix, not from 0
    assert shared["max_length_q"] == 12
    assert shared["seq_idx"][0].tolist() == [0] * 12 + [1] * 8 + [2] * 12 + [3] * 5 + [4] * 10
    assert (shared["labels"][0, :12] == -100).all()
    assert real_tokens(shared) == sum(lengths) == real_tokens(batch)


def test_a_prefix_is_shared_only_where_no_example_has_a_label_in_it_or_right_after_it():
    examples = examples_with_prefix(prompt=0)  # the answers start right after the prefix
    batch = collate(examples)
    starts = batch["cu_seq_lens_q"].tolist()
    assert shareable_prefix_length(batch["input_ids"][0], batch["labels"][0], starts) == len(PREFIX) - 1
    examples[2]["labels"][4] = examples[2]["input_ids"][4]  # a label inside the prefix of one example
    batch = collate(examples)
    assert shareable_prefix_length(batch["input_ids"][0], batch["labels"][0], batch["cu_seq_lens_q"].tolist()) == 3
    assert share_common_prefix(batch) is batch  # 3 < MIN_SHARED_PREFIX


def test_rows_without_a_long_enough_common_prefix_or_with_one_example_are_left_as_they_are():
    short = collate(examples_with_prefix(prefix=PREFIX[: MIN_SHARED_PREFIX - 1]))
    assert share_common_prefix(short) is short
    single = collate(examples_with_prefix()[:1])
    assert share_common_prefix(single) is single
    different = examples_with_prefix()
    different[1]["input_ids"][0] = 399
    different_batch = collate(different)
    assert share_common_prefix(different_batch) is different_batch


def test_the_shared_rows_loss_and_gradients_equal_those_of_a_copy_per_example(tokenizer):
    model = tiny_lora_model(tokenizer)
    model.train()

    def loss_and_gradients(batch):
        model.zero_grad()
        with per_example_attention(model):
            loss = compact_lm_loss(model, batch).loss
        loss.backward()
        return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    batch = collate(examples_with_prefix())
    copies_loss, copies = loss_and_gradients(batch)
    shared_loss, shared = loss_and_gradients(share_common_prefix(batch))
    assert shared_loss == pytest.approx(copies_loss, rel=1e-5)
    for name, gradient in copies.items():
        torch.testing.assert_close(shared[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("micro_batch_tokens", ["auto", "300"])
def test_a_run_on_chats_with_one_system_prompt_shares_it_and_trains_as_with_copies(tmp_path, tiny_model_dir, monkeypatch, micro_batch_tokens):
    """Also in passes of 300 tokens (examples of about 124), each with its own copy of the prefix, against one pass with a copy per example."""
    import importlib

    sft = importlib.import_module("togi.train.sft")
    system = "あなたは家電量販店のサポート担当です。丁寧に、短く答えてください。"
    records = [chat(f"質問{i}: 商品{i * 37 % 101}の在庫は?", f"在庫は{i}点です。") for i in range(24)]
    for record in records:
        record["messages"].insert(0, {"role": "system", "content": system})
    train_file = write_jsonl(tmp_path / "train.jsonl", records)

    def run(name: str, passes: str) -> list[float]:
        config = load_config(None, [
            f"model={tiny_model_dir}", "method=lora", "lora.dropout=0", f"data.train_file={train_file}", f"output_dir={tmp_path / name}",
            "training.max_steps=3", "training.batch_size=8", "training.gradient_accumulation=1", "training.learning_rate=1e-2",
            "data.val_ratio=0", "monitoring.samples=0", f"training.micro_batch_tokens={passes}"])
        result = train(config, log=lambda message: None)
        return [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if "train_loss" in line]

    shared_prefixes = []
    original = sft.share_common_prefix
    monkeypatch.setattr(sft, "share_common_prefix", lambda batch: shared_prefixes.append(original(batch).get(SHARED_PREFIX)) or original(batch))
    shared = run("shared", micro_batch_tokens)
    assert any(shared_prefixes) and all(length >= MIN_SHARED_PREFIX for length in shared_prefixes if length)  # a lone example shares nothing
    monkeypatch.setattr(sft, "share_common_prefix", lambda batch: batch)
    copies = run("copies", "null")
    assert [record["train_loss"] for record in shared] == pytest.approx([record["train_loss"] for record in copies], rel=1e-4)
    assert [record["tokens_seen"] for record in shared] == [record["tokens_seen"] for record in copies]  # every copy counted
