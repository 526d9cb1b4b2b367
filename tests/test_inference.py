"""Inference for the server: adapters share one loaded base, and stop sequences are cut cleanly."""

from __future__ import annotations

import pytest

from togi.serve.inference import Completion, CompletionRequest, ModelPool, StopTrimmer

from test_export import trained

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def answer(pool, adapter, text="在庫はありますか？", **settings) -> Completion:
    request = CompletionRequest(messages=[{"role": "user", "content": text}], max_tokens=8, temperature=0, **settings)
    return [item for item in pool.stream("tiny", adapter, request)][-1]


def test_fine_tuned_models_of_one_base_share_it_and_switch_adapters(tmp_path, tiny_model_dir):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = trained(tmp_path / "one", tiny_model_dir, "lora") / "adapter"
    second = trained(tmp_path / "two", tiny_model_dir, "dora") / "adapter"
    pool = ModelPool({"tiny": str(tiny_model_dir)})
    base_answer = answer(pool, None)
    answers = {name: answer(pool, (name, str(path))).text for name, path in (("ft:one", first), ("ft:two", second))}
    assert len(pool._bases) == 1 and pool.base("tiny").adapters == {"ft:one", "ft:two"}  # one copy of the base weights
    assert answer(pool, None).text == base_answer.text  # the base is still itself after adapters were loaded
    assert answer(pool, ("ft:one", str(first))).text == answers["ft:one"]  # switching back gives the same answer
    assert len(set(answers.values()) | {base_answer.text}) == 3
    assert base_answer.prompt_tokens > 0 and base_answer.completion_tokens <= 8


def test_stop_sequences_are_cut_even_when_split_across_pieces():
    trimmer = StopTrimmer(["<END>"])
    shown = []
    for piece in ["ラベル: ポジ", "ティブ<E", "N", "D>余計な続き"]:
        visible, hit = trimmer.feed(piece)
        shown.append(visible)
        if hit:
            break
    assert "".join(shown) == "ラベル: ポジティブ" and trimmer.hit
    held = StopTrimmer(["###"])
    assert held.feed("abc#") == ("abc", False) and held.feed("x") == ("#x", False)  # a false start is released
