"""Training that watches the task, not only the loss: `monitoring.eval_metric` answers the validation
prompts at each evaluation, scores them, logs and plots the score, keeps the best checkpoint by it,
and warns when the answers collapse onto one label."""

from __future__ import annotations

import json
import re

import pytest

from togi.config import ConfigError, load_config
from togi.train.task_metric import TaskScorer

from conftest import chat, write_jsonl

LABEL = re.compile(r"ラベル: (\S+)", re.MULTILINE)


def labelled(i: int, label: str) -> dict:
    return chat(f"レビュー{i}: 商品番号{i * 7919 % 10007}の使い心地について。", f"ラベル: {label}\n理由: 例{i}。")


def scorer_for(tokenizer, labels: list[str], metric: str = "accuracy") -> TaskScorer:
    from togi.data.examples import ChatExample, Message, Source

    examples = [ChatExample(messages=[Message(role="user", content=f"質問{i}"), Message(role="assistant", content=f"ラベル: {label}\n理由: 例。")],
                            source=Source(file="val.jsonl", line=i + 1, index=i)) for i, label in enumerate(labels)]
    return TaskScorer(examples, tokenizer, metric, label_pattern=LABEL, limit=64)


def test_label_answers_are_scored_by_accuracy_and_macro_f1(tokenizer):
    scorer = scorer_for(tokenizer, ["良い", "悪い", "普通", "良い"])
    scores = scorer.score_answers(["ラベル: 良い\n理由: x", "ラベル: 良い", "理由だけ", "ラベル: 良い"])
    assert scores.metrics["accuracy"] == 0.5
    assert scores.metrics["macro_f1"] == pytest.approx((0.8 + 0 + 0) / 3)  # 良い: precision 2/3, recall 1
    assert scores.predicted_labels == ["良い", "良い", None, "良い"]


def test_answers_collapsed_onto_one_label_are_named():
    from togi.train.task_metric import TaskScores

    collapsed = TaskScores({}, ["良い"] * 7 + ["悪い"], ["良い", "悪い", "普通"] * 2 + ["良い", "悪い"], [])
    assert collapsed.collapse() == ("7 of 8 validation answers carry the label '良い' (38% of the references do): "
                                    "the predictions have collapsed onto one label")
    balanced = TaskScores({}, ["良い", "悪い", "普通", "良い"], ["良い", "悪い", "普通", "良い"], [])
    assert balanced.collapse() is None
    mostly_one_in_the_data_too = TaskScores({}, ["良い"] * 4, ["良い", "良い", "良い", "悪い"], [])
    assert mostly_one_in_the_data_too.collapse() is None


def test_answers_cut_off_inside_their_label_say_the_answer_limit_is_too_small():
    from togi.train.task_metric import TaskScores

    cut = TaskScores({}, ["ネガ", "ポジティブ", "ネガ"], ["ネガティブ", "ポジティブ", "ニュートラル"], [])
    assert cut.cut_labels(24) == ("2 of 3 validation answers end inside a label (e.g. 'ネガ'): the answer limit of 24 tokens "
                                  "cut them off; raise monitoring.eval_max_new_tokens")
    wrong_but_whole = TaskScores({}, ["ネガティブ", "ポジ!", None], ["ポジティブ", "ネガティブ", "ニュートラル"], [])
    assert wrong_but_whole.cut_labels(24) is None


def test_exact_match_and_rouge_l_score_free_answers(tokenizer):
    exact = scorer_for(tokenizer, ["良い"], metric="exact_match")
    assert exact.score_answers(["ラベル: 良い\n理由: 例。"]).metrics == {"exact_match": 1.0}
    rouge = scorer_for(tokenizer, ["良い"], metric="rouge_l")
    assert 0 < rouge.score_answers(["ラベル: 良い"]).metrics["rouge_l"] < 1


@pytest.mark.parametrize("overrides, path", [
    (["monitoring.eval_metric=accuracy"], "monitoring.label_pattern"),
    (["monitoring.eval_metric=rouge_l", "monitoring.eval_every=5", "monitoring.save_every=7"], "monitoring.save_every"),
    (["monitoring.eval_metric=exact_match", "stage=dpo"], "monitoring.eval_metric"),
    (["monitoring.eval_metric=f1"], "monitoring.eval_metric"),
    (["data.balance_labels=true"], "data.balance_labels"),
    (["monitoring.eval_metric=accuracy", "monitoring.label_pattern='ラベル: ('"], "monitoring.label_pattern"),
])
def test_recipe_errors_name_the_monitoring_field(overrides, path):
    with pytest.raises(ConfigError) as caught:
        load_config(None, ["data.train_file=train.jsonl", *overrides])
    assert path in {issue.path for issue in caught.value.issues}


def test_a_run_that_learns_one_label_is_scored_at_each_evaluation_and_warned_of_collapse(tmp_path, tiny_model_dir):
    from togi.train import train

    train_file = write_jsonl(tmp_path / "train.jsonl", [labelled(i, "良い") for i in range(16)])
    val_file = write_jsonl(tmp_path / "val.jsonl", [labelled(100 + i, ["良い", "悪い", "普通"][i % 3]) for i in range(6)])
    config = load_config(None, [f"model={tiny_model_dir}", "method=full", f"data.train_file={train_file}", f"data.val_file={val_file}",
                                f"output_dir={tmp_path / 'run'}", "training.max_steps=40", "training.batch_size=4",
                                "training.gradient_accumulation=1", "training.learning_rate=3e-3", "monitoring.samples=0",
                                "monitoring.eval_every=20", "monitoring.save_every=20", "monitoring.eval_metric=accuracy",
                                "monitoring.label_pattern='ラベル: (\\S+)'", "monitoring.eval_max_new_tokens=12"])
    result = train(config, log=lambda message: None)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    scored = [record for record in records if "eval_accuracy" in record]
    assert [record["step"] for record in scored] == [20, 40]
    assert scored[-1]["eval_accuracy"] == pytest.approx(2 / 6)  # it says 良い to everything: right on the two 良い reviews
    assert "eval_loss" in scored[-1] and "eval_macro_f1" in scored[-1]
    assert any("6 of 6 validation answers carry the label '良い' (33% of the references do)" in warning for warning in result.warnings)
    assert (result.run_dir / "loss.png").stat().st_size > 0


def test_balanced_batches_hold_each_label_in_equal_shares_even_from_a_sorted_file(tmp_path, tiny_model_dir, tokenizer):
    from transformers import TrainerCallback

    from togi.train import train

    class SeeBatches(TrainerCallback):
        labels: list[list[str]] = []

        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            for batch in train_dataloader:
                self.labels.append(LABEL.findall(tokenizer.decode(batch["input_ids"].flatten())))

    rows = [labelled(i, label) for label in ("良い", "悪い", "普通") for i in range(6)]  # sorted by label: the worst order
    train_file = write_jsonl(tmp_path / "train.jsonl", rows)
    config = load_config(None, [f"model={tiny_model_dir}", f"data.train_file={train_file}", "data.val_ratio=0", f"output_dir={tmp_path / 'run'}",
                                "training.max_steps=1", "training.batch_size=3", "training.gradient_accumulation=1", "monitoring.samples=0",
                                "data.balance_labels=true", "monitoring.label_pattern='ラベル: (\\S+)'"])
    messages: list[str] = []
    train(config, log=messages.append, callbacks=[SeeBatches()])
    assert "batches balance the labels: 悪い 6, 普通 6, 良い 6" in messages
    assert len(SeeBatches.labels) == 6 and all(sorted(batch) == ["悪い", "普通", "良い"] for batch in SeeBatches.labels)


def test_the_best_checkpoint_by_the_task_metric_is_the_one_kept(tmp_path, tiny_model_dir):
    """Early stopping on accuracy: a run whose accuracy never improves stops after `patience` evaluations and
    keeps the weights of its best evaluation, the first one."""
    from togi.train import train

    train_file = write_jsonl(tmp_path / "train.jsonl", [labelled(i, "良い") for i in range(16)])
    val_file = write_jsonl(tmp_path / "val.jsonl", [labelled(100 + i, "悪い") for i in range(4)])  # never said: accuracy stays 0
    config = load_config(None, [f"model={tiny_model_dir}", "method=full", f"data.train_file={train_file}", f"data.val_file={val_file}",
                                f"output_dir={tmp_path / 'run'}", "training.max_steps=40", "training.batch_size=4",
                                "training.gradient_accumulation=1", "training.learning_rate=3e-3", "monitoring.samples=0",
                                "monitoring.eval_every=4", "monitoring.save_every=4", "monitoring.eval_metric=accuracy",
                                "monitoring.early_stopping_patience=2", "monitoring.label_pattern='ラベル: (\\S+)'",
                                "monitoring.eval_max_new_tokens=8"])
    result = train(config, log=lambda message: None)
    assert result.status == "early_stopped" and result.steps == 12  # evaluations at 4, 8, 12: no gain after the first
    state = json.loads((result.run_dir / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text())
    assert state["best_metric"] == 0.0 and state["best_model_checkpoint"].endswith("checkpoint-4")
