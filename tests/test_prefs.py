"""`togi data prefs`: sampled answers judged into DPO pairs by real (tiny) models, over HTTP and in-process."""

from __future__ import annotations

import json

import pytest

from togi.data.formats import load_prompts
from togi.data.preference_pairs import distinct_answers, judge_messages, parse_pair_verdict, prompt_seed
from togi.export.chat import load_chat_model
from togi.models.chat_model import ChatSettings
from togi.train.preference import preference_rows

from conftest import ALWAYS_A, chat, distinct_chats, judge_server, train_constant_chat_model, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
FIRST_IS_BEST = '{"best": 1, "worst": 2, "reason": "polite"}'


@pytest.fixture(scope="module")
def first_is_best_judge(tmp_path_factory, tokenizer, tiny_model_dir):
    """A tiny model trained to always name answer 1 the best and answer 2 the worst: a real, position-biased judge.
    It learns from answers like the ones it will judge: sampled from the tiny model the tests sample from."""
    sampler = load_chat_model(str(tiny_model_dir))
    records = []
    for i, chat in enumerate(distinct_chats(32)):
        answers = sampler.sample([chat["messages"][0]], 2 + i % 3, ChatSettings(max_new_tokens=12, temperature=0.8, seed=1000 + i))
        records.append({"messages": [*judge_messages([chat["messages"][0]], answers), {"role": "assistant", "content": FIRST_IS_BEST}]})
    return train_constant_chat_model(tmp_path_factory.mktemp("pair-judge"), tokenizer, records, max_steps=150)


def prompts_file(tmp_path, count=10):
    """Prompts in each accepted form: chat rows with a final answer to drop, {"prompt": ...} rows and bare strings."""
    chats = distinct_chats(count)
    rows = [chat if i % 3 == 0 else {"prompt": chat["messages"][0]["content"]} if i % 3 == 1 else chat["messages"][0]["content"]
            for i, chat in enumerate(chats)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows), [chat["messages"][0]["content"] for chat in chats]


def read_pairs(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def prefs(cli, prompts, out, model, *extra):
    return cli("data", "prefs", "--prompts", prompts, "--out", out, "--model", model, "-n", "3", "--max-new-tokens", "12", *extra)


def test_pairs_carry_the_judges_choice_and_reason_and_train_in_the_dpo_stage(cli, tmp_path, tiny_model_dir, tokenizer_dir, first_is_best_judge):
    prompts, questions = prompts_file(tmp_path)
    out = tmp_path / "pairs.jsonl"
    with judge_server(first_is_best_judge) as url:
        result = prefs(cli, prompts, out, tiny_model_dir, "--judge-url", url, "--judge-model", "tiny-judge")
    assert result.exit_code == 0, result.output
    assert "10 pairs written" in result.stdout and "0 of 10 prompts skipped" in result.stdout
    pairs = read_pairs(out)
    assert [pair["prompt"] for pair in pairs] == [[{"role": "user", "content": question}] for question in questions]  # answers dropped
    sampler = load_chat_model(str(tiny_model_dir))
    for pair, question in zip(pairs, questions):
        meta = pair["togi"]
        assert meta["reason"] == "polite" and meta["judge"] == f"tiny-judge at {url}" and meta["n"] == 3
        # The judge named the answers shown first and second: the shuffled order maps them back to the samples.
        settings = ChatSettings(max_new_tokens=12, temperature=0.8, seed=prompt_seed(0, meta["prompt_sha256"]))
        answers = distinct_answers(sampler.sample(pair["prompt"], 3, settings))
        assert meta["distinct_answers"] == len(answers) >= 2 and sorted(meta["shown_order"]) == list(range(len(answers)))
        assert pair["chosen"] == [{"role": "assistant", "content": answers[meta["shown_order"][0]]}]
        assert pair["rejected"] == [{"role": "assistant", "content": answers[meta["shown_order"][1]]}]
        assert pair["chosen"] != pair["rejected"]
    assert len({tuple(pair["togi"]["shown_order"]) for pair in pairs}) > 1  # the order is shuffled per prompt
    check = cli("data", "check", out, "--model", tokenizer_dir, "--json")
    report = json.loads(check.stdout)
    assert check.exit_code == 0 and report["kind"] == "preference" and report["stats"]["n_examples"] == 10
    assert not {"unrecognized_key", "identical_pair"} & {finding["code"] for finding in report["findings"]}
    assert len(preference_rows(out, "dpo")) == 10
    trained = cli("train", "--model", tiny_model_dir, "--data", out, "--output-dir", tmp_path / "dpo", "--stage", "dpo", "--max-steps", "2")
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "dpo" / "adapter").is_dir()


def test_a_rerun_after_a_kill_writes_each_prompt_exactly_once_and_the_same_pairs(cli, tmp_path, tiny_model_dir, first_is_best_judge):
    prompts, _ = prompts_file(tmp_path, count=6)
    uninterrupted = tmp_path / "uninterrupted.jsonl"
    local_judge = ("--judge-model", str(first_is_best_judge))
    assert prefs(cli, prompts, uninterrupted, tiny_model_dir, *local_judge).exit_code == 0
    lines = uninterrupted.read_bytes().splitlines(keepends=True)
    killed = tmp_path / "killed.jsonl"
    killed.write_bytes(b"".join(lines[:3]) + lines[3][: len(lines[3]) // 2])  # killed while writing the fourth pair
    result = prefs(cli, prompts, killed, tiny_model_dir, *local_judge)
    assert result.exit_code == 0, result.output
    assert "dropped a cut-off last line" in result.stderr and "3 pairs written" in result.stdout and "3 prompts were already there" in result.stdout
    assert killed.read_bytes() == uninterrupted.read_bytes()  # each prompt once, with the answers an uninterrupted run picked
    again = prefs(cli, prompts, killed, tiny_model_dir, *local_judge)
    assert "0 pairs written" in again.stdout and "6 prompts were already there" in again.stdout and again.exit_code == 0
    assert killed.read_bytes() == uninterrupted.read_bytes()


def test_a_run_directory_answers_with_its_tuned_model_and_training_system_prompt(cli, tmp_path, tiny_model_dir, first_is_best_judge):
    from togi.config import load_config
    from togi.train import train

    system = "丁寧に答えてください。"
    data = write_jsonl(tmp_path / "train.jsonl", [chat(row["messages"][0]["content"], row["messages"][1]["content"], system)
                                                  for row in distinct_chats(12)])
    config = load_config(None, [f"model={tiny_model_dir}", "method=lora", f"data.train_file={data}", f"output_dir={tmp_path / 'run'}",
                                "training.max_steps=2", "training.batch_size=4", "monitoring.samples=0", "data.val_ratio=0"])
    run_dir = train(config, log=lambda message: None).run_dir
    prompts, questions = prompts_file(tmp_path, count=2)
    result = prefs(cli, prompts, tmp_path / "pairs.jsonl", run_dir, "--judge-model", str(first_is_best_judge))
    assert result.exit_code == 0, result.output
    pairs = read_pairs(tmp_path / "pairs.jsonl")
    assert [pair["prompt"] for pair in pairs] == [[{"role": "system", "content": system}, {"role": "user", "content": question}]
                                                  for question in questions]  # DPO then trains on what the model was asked
    tuned = load_chat_model(str(run_dir))  # the base with the run's adapter merged, and the run's chat template
    settings = ChatSettings(max_new_tokens=12, temperature=0.8, seed=prompt_seed(0, pairs[0]["togi"]["prompt_sha256"]))
    assert pairs[0]["chosen"][0]["content"] in tuned.sample(pairs[0]["prompt"], 3, settings)


def test_a_judge_that_answers_garbage_skips_prompts_and_says_so(cli, tmp_path, tiny_model_dir, biased_judge_dir):
    prompts, _ = prompts_file(tmp_path, count=3)
    out = tmp_path / "pairs.jsonl"
    with judge_server(biased_judge_dir) as url:  # trained on another prompt, it answers this one in broken JSON
        result = prefs(cli, prompts, out, tiny_model_dir, "--judge-url", url, "--judge-model", "tiny-judge")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "0 pairs written" in result.stdout and "3 of 3 prompts skipped (unusable_verdict 3)" in result.stdout
    for line in (1, 2, 3):  # each skip named, with what the judge said
        assert f"{prompts}:{line}: the judge's reply named no valid, different best and worst: '{{" in result.stderr
    assert "no preference pair was produced" in result.stderr and out.read_text() == ""


def test_judging_in_both_orders_catches_a_judge_that_always_picks_a_position(cli, tmp_path, tiny_model_dir, first_is_best_judge):
    prompts, _ = prompts_file(tmp_path, count=3)
    result = prefs(cli, prompts, tmp_path / "pairs.jsonl", tiny_model_dir, "--judge-model", str(first_is_best_judge), "--both-orders")
    assert "3 of 3 prompts skipped (order_dependent 3)" in result.stdout and result.exit_code == 1


def test_identical_answers_and_repeated_prompts_are_skipped_without_asking_the_judge(cli, tmp_path, tiny_model_dir):
    first, second = (chat["messages"][0]["content"] for chat in distinct_chats(2))
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [first, {"prompt": first}, second])
    # top-p 0.01 keeps only the likeliest token: the n answers are all the same, and the judge (unreachable) is never asked.
    result = cli("data", "prefs", "--prompts", prompts, "--model", tiny_model_dir, "--max-new-tokens", "8", "--top-p", "0.01",
                 "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "x")
    assert "3 of 3 prompts skipped (identical_answers 2, duplicate_prompt 1)" in result.stdout
    assert f"{prompts}:2: the same prompt came earlier in the file" in result.stderr
    assert (tmp_path / "prompts.prefs.jsonl").read_text() == ""  # the default output sits beside the prompts


def test_bad_prompt_rows_are_named_by_file_and_line(cli, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "在庫はありますか？"}\n{"prompt": \n{"messages": [{"role": "assistant", "content": "はい"}]}\n{"text": "x"}\n',
                       encoding="utf-8")
    result = cli("data", "prefs", "--prompts", prompts, "--judge-url", "http://127.0.0.1:9/v1", "--judge-model", "x")
    assert result.exit_code == 1
    for line, code in ((2, "invalid_json"), (3, "missing_user"), (4, "unknown_format")):
        assert f"{prompts}:{line}" in result.stderr and f"[{code}]" in result.stderr
    assert "nothing was generated" in result.stderr and not (tmp_path / "prompts.prefs.jsonl").exists()


def test_usage_errors_are_one_line_with_a_hint(cli, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", ["在庫はありますか？"])
    no_judge = cli("data", "prefs", "--prompts", prompts)
    assert no_judge.exit_code == 2 and "a judge is needed" in no_judge.stderr and "hint:" in no_judge.stderr
    greedy = cli("data", "prefs", "--prompts", prompts, "--temperature", "0", "--judge-model", "x")
    assert greedy.exit_code == 2 and "--temperature 0" in greedy.stderr
    missing = cli("data", "prefs", "--prompts", tmp_path / "nope.jsonl", "--judge-model", "x")
    assert missing.exit_code == 2 and "no such file" in missing.stderr


def test_prompts_come_from_chat_rows_prompt_rows_and_text_lines(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("在庫はありますか？\n\n返品できますか？\n", encoding="utf-8")
    rows, findings = load_prompts(text)
    assert [(row.source.line, row.messages[0].content) for row in rows] == [(1, "在庫はありますか？"), (3, "返品できますか？")] and not findings
    chat = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "system", "content": "丁寧に"}, {"role": "user", "content": "a"},
                                                              {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"},
                                                              {"role": "assistant", "content": "d"}]}])
    (row,), _ = load_prompts(chat)
    assert [m.content for m in row.messages] == ["丁寧に", "a", "b", "c"]  # up to the last user message
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": [m.to_openai_dict() for m in row.messages]}])
    assert load_prompts(same)[0][0].key == row.key  # the key is the content's, whatever the row's form


@pytest.mark.parametrize("reply,count,expected", [
    (FIRST_IS_BEST, 3, (0, 1)),
    ('```json\n{"best": "Answer 3", "worst": "#1", "reason": "r",}\n```', 3, (2, 0)),
    ('{"best": 2, "worst": 2, "reason": "a tie"}', 3, None),
    ('{"best": 4, "worst": 1, "reason": "out of range"}', 3, None),
    ('{"best": true, "worst": 1}', 3, None),
    (ALWAYS_A, 3, None),
    ("Answer 1 is best.", 3, None),
])
def test_verdicts_name_a_valid_different_best_and_worst(reply, count, expected):
    verdict = parse_pair_verdict(reply, count)
    assert (verdict.best, verdict.worst) == expected if expected else verdict is None
