"""Preference and RL stages on a tiny in-process model: each moves the model the way its objective says."""

from __future__ import annotations

import json

import pytest

from togi.config import load_config
from togi.train import train
from togi.train.preference import preference_rows, score_pairs, score_with_reward_model

from conftest import write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
POLITE = ["はい、在庫がございます。", "承知しました。本日発送いたします。", "ご不便をおかけして申し訳ございません。", "はい、返品を承ります。"]
CURT = ["The quick brown fox", "lazy dog jumps", "system user assistant", "brown dog quick"]


def pairs(start: int, count: int) -> list[dict]:
    """TRL-style pairs: a polite Japanese answer is preferred to an English fragment."""
    return [{"prompt": [{"role": "user", "content": f"質問{i}: 商品番号{i * 37}について教えてください。"}],
             "chosen": [{"role": "assistant", "content": POLITE[i % 4]}],
             "rejected": [{"role": "assistant", "content": CURT[i % 4]}]} for i in range(start, start + count)]


def openai_dpo(rows: list[dict]) -> list[dict]:
    return [{"input": {"messages": row["prompt"]}, "preferred_output": row["chosen"], "non_preferred_output": row["rejected"]} for row in rows]


def stage_config(tmp_path, model_dir, stage, data, *extra):
    return load_config(None, [f"model={model_dir}", f"stage={stage}", f"data.train_file={data}", f"output_dir={tmp_path / stage}",
                              "training.max_steps=8", "training.batch_size=4", "training.gradient_accumulation=1",
                              "training.learning_rate=5e-3", "monitoring.log_every=1", *extra])


def logged(run_dir, key) -> list[float]:
    return [record[key] for record in map(json.loads, (run_dir / "stage_metrics.jsonl").read_text().splitlines()) if key in record]


def tuned(run_dir, model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), run_dir / "adapter").eval()


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
def test_dpo_widens_the_margin_and_raises_preference_accuracy_on_held_out_pairs(tmp_path, tiny_model_dir, tokenizer, loss_type):
    from transformers import AutoModelForCausalLM

    from togi.train.preference import pair_margins

    data = write_jsonl(tmp_path / "pairs.jsonl", openai_dpo(pairs(0, 16)))  # OpenAI's DPO format reads the same
    held_out = pairs(100, 8)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    run_dir = train(stage_config(tmp_path, tiny_model_dir, "dpo", data, f"preference.loss_type={loss_type}"), log=lambda m: None).run_dir
    model = tuned(run_dir, tiny_model_dir)
    before, after = pair_margins(base, tokenizer, held_out), pair_margins(model, tokenizer, held_out)
    assert sum(after) / len(after) > sum(before) / len(before) + 1.0  # log p(chosen) - log p(rejected) widens on unseen pairs
    scores = score_pairs(model, base, tokenizer, held_out)  # the implicit reward against the base, as DPO defines it
    assert scores["margin"] > 1.0 and scores["accuracy"] == 1.0  # the base itself scores 0 on both
    assert json.loads((run_dir / "run.json").read_text())["stage"] == "dpo" and (run_dir / "metrics.jsonl").is_file()


@pytest.mark.parametrize("stage", ["orpo", "kto"])
def test_orpo_and_kto_run_and_their_loss_falls(tmp_path, tiny_model_dir, stage):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(0, 16))
    run_dir = train(stage_config(tmp_path, tiny_model_dir, stage, data), log=lambda m: None).run_dir
    losses = logged(run_dir, "loss")
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < sum(losses[:2]) / 2
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_kto_reads_unpaired_rows_and_pairs_become_two_rows(tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(0, 3))
    rows = preference_rows(data, "kto")
    assert [row["label"] for row in rows] == [True, False] * 3 and rows[0]["completion"] == pairs(0, 1)[0]["chosen"]


def test_the_reward_model_ranks_held_out_chosen_answers_above_rejected(tmp_path, tiny_model_dir, tokenizer):
    from peft import AutoPeftModelForSequenceClassification

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(0, 16))
    run_dir = train(stage_config(tmp_path, tiny_model_dir, "reward", data), log=lambda m: None).run_dir
    model = AutoPeftModelForSequenceClassification.from_pretrained(run_dir / "adapter", num_labels=1).eval()
    assert score_with_reward_model(model, tokenizer, pairs(100, 8)) > 0.5  # better than chance; here it is all of them


def test_rlhf_raises_the_mean_reward(tmp_path, tiny_model_dir):
    prompts = write_jsonl(tmp_path / "pairs.jsonl", pairs(0, 16))
    config = stage_config(tmp_path, tiny_model_dir, "rlhf", prompts, "rlhf.reward_function=rewards:japanese_share",
                          "rlhf.num_generations=4", "rlhf.max_new_tokens=8", "training.max_steps=12", "training.learning_rate=2e-2")
    run_dir = train(config, log=lambda m: None).run_dir
    rewards = logged(run_dir, "reward")
    assert len(rewards) == 12 and sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4


def test_togi_train_runs_a_stage_and_refuses_the_wrong_data(cli, tmp_path, tiny_model_dir):
    from conftest import distinct_chats

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(0, 8))
    result = cli("train", "--model", tiny_model_dir, "--data", data, "--output-dir", tmp_path / "run", "--stage", "dpo", "--max-steps", "2")
    assert result.exit_code == 0, result.output
    assert "stage dpo finished" in result.stdout and (tmp_path / "run" / "adapter").is_dir()
    chats = write_jsonl(tmp_path / "chats.jsonl", distinct_chats(12))
    result = cli("train", "--model", tiny_model_dir, "--data", chats, "--output-dir", tmp_path / "run2", "--stage", "orpo")
    assert result.exit_code == 1 and "needs preference pairs" in result.stderr
