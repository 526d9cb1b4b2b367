"""LLM-as-judge: robust verdict parsing, both orders to cancel position bias, and a real judge over HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from togi.evaluate.judge import (
    JUDGE_SYSTEM,
    JUDGE_TEMPLATE,
    JudgeError,
    OpenAICompatibleJudge,
    Verdict,
    combine_orders,
    judge_pairs,
    parse_verdict,
    wilson_interval,
)

from conftest import build_tiny_model, write_jsonl

ALWAYS_A = '{"winner": "A", "reason": "A is better", "score_a": 5, "score_b": 2}'


@pytest.mark.parametrize("reply,winner,scores", [
    (ALWAYS_A, "A", (5, 2)),
    ('```json\n{"winner": "B", "reason": "more accurate", "score_a": 2, "score_b": 4,}\n```', "B", (2, 4)),
    ('I compared them. {"winner": "tie", "reason": "same", "score_a": "3", "score_b": 3.4} Done.', "tie", (3, 3)),
    ('{"winner": "Answer A", "reason": "has {braces} in it", "score_a": 9, "score_b": 0}', "A", (5, 1)),
    ('{"winner": "B", "reason": "cut off by max_tokens", "score_a": 1, "score_b": 4', "B", (1, 4)),
    ("Winner: B, because it is correct.", "B", (None, None)),
    ("I cannot decide.", None, (None, None)),
])
def test_verdicts_are_parsed_from_whatever_the_judge_writes(reply, winner, scores):
    verdict = parse_verdict(reply)
    assert verdict.winner == winner and (verdict.score_a, verdict.score_b) == scores


@pytest.mark.parametrize("tuned_first,base_first,outcome", [
    ("A", "B", "win"), ("B", "A", "loss"), ("A", "A", "tie"), ("B", "B", "tie"),
    ("tie", "tie", "tie"), ("A", "tie", "tie"), ("A", None, "win"), (None, None, "invalid"),
])
def test_both_orders_cancel_position_bias(tuned_first, base_first, outcome):
    assert combine_orders(Verdict(tuned_first), Verdict(base_first)) == outcome


def test_wilson_interval_by_hand():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.fixture(scope="module")
def biased_judge_dir(tmp_path_factory, tokenizer):
    """A tiny model trained (full fine-tuning) to always answer ALWAYS_A: a real, maximally position-biased judge."""
    from togi.config import load_config
    from togi.train import train

    directory = tmp_path_factory.mktemp("judge")
    model = build_tiny_model(tokenizer)
    model.config.max_position_embeddings = 1024
    base = directory / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    records = [{"messages": [{"role": "system", "content": JUDGE_SYSTEM},
                             {"role": "user", "content": JUDGE_TEMPLATE.format(question=f"質問{i}", reference=f"参照{i}",
                                                                               answer_a=(f"答え{i}", f"回答{i}")[i % 2],
                                                                               answer_b=(f"回答{i}", f"答え{i}")[i % 2])},
                             {"role": "assistant", "content": ALWAYS_A}]} for i in range(16)]
    data = write_jsonl(directory / "judge.jsonl", records)
    config = load_config(None, [f"model={base}", "method=full", f"data.train_file={data}", f"output_dir={directory / 'run'}",
                                "training.max_steps=40", "training.batch_size=4", "training.gradient_accumulation=1",
                                "training.learning_rate=3e-3", "data.val_ratio=0", "monitoring.samples=0"])
    return train(config, log=lambda message: None).output_dir


def test_a_real_judge_over_http_and_its_position_bias_cancelled(biased_judge_dir):
    server = subprocess.Popen([sys.executable, str(Path(__file__).parent / "tiny_chat_server.py"), str(biased_judge_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(server.stdout.readline())
        judge = OpenAICompatibleJudge(f"http://127.0.0.1:{port}/v1", model="tiny-judge")
        items = [{"question": f"質問{i}", "reference": f"参照{i}", "tuned": f"答え{i}", "baseline": f"回答{i}"} for i in range(3)]
        judgements, summary = judge_pairs(judge, items)
    finally:
        server.terminate()
        server.wait()
    assert [j["tuned_first"]["winner"] for j in judgements] == ["A", "A", "A"]  # the judge really answered, in JSON
    assert [j["base_first"]["winner"] for j in judgements] == ["A", "A", "A"]
    assert (summary.wins, summary.ties, summary.losses, summary.invalid) == (0, 3, 0, 0)  # always-A is no evidence


def test_an_unreachable_judge_is_a_clear_error():
    with pytest.raises(JudgeError, match="cannot reach the judge"):
        OpenAICompatibleJudge("http://127.0.0.1:9/v1", model="x", timeout=2).complete([{"role": "user", "content": "hi"}])
