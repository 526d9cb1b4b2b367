"""LLM-as-judge: robust verdict parsing, both orders to cancel position bias, and a real judge over HTTP."""

from __future__ import annotations

import pytest

from togi.evaluate.judge import Verdict, combine_orders, judge_pairs, parse_verdict, wilson_interval
from togi.models.chat_client import ChatClientError, OpenAICompatibleClient

from conftest import ALWAYS_A, distinct_chats, judge_server


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


def test_a_real_judge_over_http_and_its_position_bias_cancelled(biased_judge_dir):
    with judge_server(biased_judge_dir) as base_url:
        judge = OpenAICompatibleClient(base_url, model="tiny-judge", role="the judge")
        items = [{"question": chat["messages"][0]["content"], "reference": chat["messages"][1]["content"],
                  "tuned": f"在庫は{i}点です", "baseline": f"配送は{i}日後"} for i, chat in enumerate(distinct_chats(40)[35:38])]
        judgements, summary = judge_pairs(judge, items)
    assert [j["tuned_first"]["winner"] for j in judgements] == ["A", "A", "A"]  # the judge really answered, in JSON
    assert [j["base_first"]["winner"] for j in judgements] == ["A", "A", "A"]
    assert (summary.wins, summary.ties, summary.losses, summary.invalid) == (0, 3, 0, 0)  # always-A is no evidence


def test_an_unreachable_judge_is_a_clear_error():
    with pytest.raises(ChatClientError, match="cannot reach the judge"):
        OpenAICompatibleClient("http://127.0.0.1:9/v1", model="x", timeout=2, role="the judge").complete([{"role": "user", "content": "hi"}])


def test_a_local_model_can_be_the_judge(biased_judge_dir):
    from togi.export.chat import load_chat_model

    judge = load_chat_model(str(biased_judge_dir))
    chat = distinct_chats(40)[36]["messages"]
    _, summary = judge_pairs(judge, [{"question": chat[0]["content"], "reference": chat[1]["content"], "tuned": "在庫あり", "baseline": "不明"}])
    assert (summary.ties, summary.invalid) == (1, 0)
