"""`data.label_loss_weight`: the tokens of the label in each answer (read with `monitoring.label_pattern`) count
that many times in the training loss; every other answer token counts once, prompts not at all, and the sum is
still divided by the number of answer tokens."""

from __future__ import annotations

import json
import re

import pytest
import torch

from togi.config import ConfigError, load_config
from togi.data.examples import ChatExample, Message, Source
from togi.train.data import IGNORE_INDEX, tokenize_examples
from togi.train.label_weights import LABEL_WEIGHTS, LabelWeightCollator
from togi.train.loss import compact_lm_loss

from conftest import build_tiny_model, chat, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

LABEL = re.compile(r"ラベル: (\S+)", re.MULTILINE)
SYSTEM = "「ラベル: ポジティブ/ネガティブ」と「理由: 一文」で答えてください。"  # the label pattern matches here too


def review(text: str, label: str) -> ChatExample:
    return ChatExample(messages=[Message("system", SYSTEM), Message("user", text), Message("assistant", f"ラベル: {label}\n理由: {text}だから。")],
                       source=Source("train.jsonl", 1, 0))


def weighted_text(tokenizer, example: ChatExample, weight: float) -> tuple[str, list[float], list[int]]:
    row = tokenize_examples([example], tokenizer, max_length=512, label_pattern=LABEL, label_loss_weight=weight).dataset[0]
    heavy = [token for token, w in zip(row["input_ids"], row[LABEL_WEIGHTS]) if w == weight]
    return tokenizer.decode(heavy), row[LABEL_WEIGHTS], row["labels"]


def test_only_the_label_of_the_answer_weighs_more_not_the_same_words_in_the_prompt(tokenizer):
    text, weights, labels = weighted_text(tokenizer, review("電池がすぐ切れる", "ネガティブ"), 20.0)
    assert text.strip() == "ネガティブ"
    assert set(weights) == {1.0, 20.0}
    assert all(label != IGNORE_INDEX for label, w in zip(labels, weights) if w == 20.0)  # every weighted token is trained


def test_answers_without_a_label_keep_weight_one_and_are_counted(tokenizer):
    example = ChatExample(messages=[Message("user", "こんにちは"), Message("assistant", "こんにちは！")], source=Source("train.jsonl", 2, 1))
    tokenized = tokenize_examples([example, review("良い音", "ポジティブ")], tokenizer, max_length=512, label_pattern=LABEL, label_loss_weight=5)
    assert tokenized.without_label == 1
    assert set(tokenized.dataset[0][LABEL_WEIGHTS]) == {1.0}
    assert 5.0 in tokenized.dataset[1][LABEL_WEIGHTS]


def test_weight_one_adds_no_column(tokenizer):
    tokenized = tokenize_examples([review("良い音", "ポジティブ")], tokenizer, max_length=512, label_pattern=LABEL, label_loss_weight=1)
    assert tokenized.dataset.column_names == ["input_ids", "labels"]


def weighted_examples(tokenizer) -> list[dict]:
    examples = [review("電池がすぐ切れる", "ネガティブ"), review("音がとても良い", "ポジティブ"), review("普通に使える", "ニュートラル")]
    return tokenize_examples(examples, tokenizer, max_length=512, label_pattern=LABEL, label_loss_weight=7.0).dataset.to_list()


@pytest.mark.parametrize("padding_free", [True, False])
def test_the_collator_lays_the_weights_out_like_the_labels(tokenizer, padding_free):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    examples = weighted_examples(tokenizer)
    batch = LabelWeightCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=padding_free))(examples)
    assert batch[LABEL_WEIGHTS].shape == batch["labels"].shape
    heavy_tokens = batch["input_ids"][batch[LABEL_WEIGHTS] == 7.0]
    assert tokenizer.decode(heavy_tokens).replace(" ", "") == "ネガティブポジティブニュートラル"  # in the examples' order
    if not padding_free:  # padding weighs nothing
        assert (batch[LABEL_WEIGHTS][batch["attention_mask"] == 0] == 0).all()


def test_the_weighted_loss_is_the_weighted_cross_entropy_of_the_full_logits(tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = LabelWeightCollator(DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id))(weighted_examples(tokenizer))
    weights = batch.pop(LABEL_WEIGHTS)
    model = build_tiny_model(tokenizer)

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets, position_weights = batch["labels"][:, 1:], weights[:, 1:]
    trained = targets != IGNORE_INDEX
    per_token = torch.nn.functional.cross_entropy(logits[trained], targets[trained], reduction="none")
    expected = (per_token * position_weights[trained]).sum() / trained.sum()
    expected.backward()
    expected_gradients = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    actual = compact_lm_loss(model, batch, label_weights=weights).loss
    actual.backward()
    assert actual.item() == pytest.approx(expected.item(), rel=1e-5)
    assert actual.item() > compact_lm_loss(model, batch).loss.item()  # the weights did something
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, expected_gradients[name], rtol=1e-4, atol=1e-6), name


def test_a_run_with_the_label_weighted_trains_on_the_weighted_loss_and_says_so(tmp_path, tiny_model_dir):
    """The same run at weight 1 and weight 50: the first step's batch and model are the same, so its loss is
    larger exactly when the weights reach the loss through the Trainer."""
    from togi.train import train

    rows = [chat(f"レビュー{i}: 品番{i * 7919 % 10007}", f"ラベル: {label}\n理由: 例{i}。") for i in range(12)
            for label in [["良い", "悪い", "普通"][i % 3]]]
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    first_losses = []
    for weight in (1, 50):
        messages: list[str] = []
        result = train(load_config(None, [f"model={tiny_model_dir}", f"data.train_file={train_file}", "data.val_ratio=0",
                                          f"output_dir={tmp_path / f'run-{weight}'}", "training.max_steps=2", "training.batch_size=3",
                                          "training.gradient_accumulation=1", "monitoring.samples=0", f"data.label_loss_weight={weight}",
                                          "monitoring.label_pattern='ラベル: (\\S+)'"]), log=messages.append)
        records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        first_losses.append(next(record["train_loss"] for record in records if "train_loss" in record))
        said = [message for message in messages if "data.label_loss_weight" in message]
        assert said == ([] if weight == 1 else ["the label's tokens weigh 50x in the training loss (data.label_loss_weight; the eval loss "
                                                "is unweighted): found in 12 of 12 training answers"])
    assert first_losses[1] > 2 * first_losses[0]


@pytest.mark.parametrize("overrides, message", [
    (["data.label_loss_weight=20"], "needs monitoring.label_pattern"),
    (["data.label_loss_weight=20", "monitoring.label_pattern='ラベル: (\\S+)'", "method=prompt_tuning"], "method prompt_tuning"),
    (["data.label_loss_weight=20", "monitoring.label_pattern='ラベル: (\\S+)'", "stage=dpo"], "chat dpo"),
    (["data.label_loss_weight=0.5"], "greater than or equal to 1"),
])
def test_recipe_errors_name_the_label_loss_weight_field(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.train_file=train.jsonl", *overrides])
    assert [issue.path for issue in caught.value.issues] == ["data.label_loss_weight"]
    assert message in str(caught.value)
