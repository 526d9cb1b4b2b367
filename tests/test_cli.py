"""The `togi data` commands as a user meets them: exit codes, one-line errors, JSON output."""

from __future__ import annotations

import json

import pytest

from conftest import BROKEN, DEMO, distinct_chats, write_jsonl


def test_check_exits_0_on_a_clean_file_and_prints_the_statistics(cli, tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "clean.jsonl", distinct_chats(60))
    result = cli("data", "check", path, "--model", tokenizer_dir)
    assert result.exit_code == 0, result.output
    assert "tokens / example" in result.stdout and "60 valid chat examples" in result.stdout


def test_check_exits_1_and_names_line_field_and_hint(cli, tokenizer_dir):
    result = cli("data", "check", BROKEN / "openai_rules.jsonl", "--model", tokenizer_dir)
    assert result.exit_code == 1
    assert "openai_rules.jsonl:6 example 5 messages[0].role: error[unrecognized_role] unrecognized role 'robot'" in result.stdout
    assert "hint: use one of: system, user, assistant, tool, function" in result.stdout


def test_strict_fails_on_warnings(cli, tokenizer_dir):
    assert cli("data", "check", BROKEN / "quality.jsonl", "--model", tokenizer_dir).exit_code == 0
    assert cli("data", "check", BROKEN / "quality.jsonl", "--model", tokenizer_dir, "--strict").exit_code == 1


def test_check_json_is_one_document_with_findings_and_stats(cli, tokenizer_dir):
    result = cli("data", "check", BROKEN / "quality.jsonl", "--model", tokenizer_dir, "--json")
    document = json.loads(result.stdout)
    assert document["ok"] is True and document["format"] == "chat"
    near = [f for f in document["findings"] if f["code"] == "near_duplicate"]
    assert [f["line"] for f in near] == [9, 15] and near[0]["severity"] == "warning"
    assert document["stats"]["n_examples"] == 15 and document["stats"]["tokens"]["max"] > 0


@pytest.mark.parametrize("target,message", [("directory", "is a directory"), ("missing.jsonl", "no such file")])
def test_an_unreadable_file_is_one_line_on_stderr_with_exit_2(cli, tmp_path, target, message):
    path = tmp_path if target == "directory" else tmp_path / target
    result = cli("data", "check", path)
    assert result.exit_code == 2
    assert message in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


def test_a_model_that_cannot_be_found_is_a_usage_error(cli, tmp_path):
    result = cli("data", "check", DEMO, "--model", tmp_path / "no-such-model")
    assert result.exit_code == 2 and "no model directory" in result.stderr


def test_an_unknown_format_name_is_a_usage_error(cli):
    result = cli("data", "check", DEMO, "--format", "sharegpt")
    assert result.exit_code == 2 and "choose one of" in result.stderr


def test_an_invalid_label_pattern_is_a_usage_error(cli, tokenizer_dir):
    result = cli("data", "check", DEMO, "--model", tokenizer_dir, "--label-pattern", "ラベル: (")
    assert result.exit_code == 2 and "not a valid regular expression" in result.stderr


def test_stats_json_reports_labels_and_cost(cli, tokenizer_dir):
    result = cli("data", "stats", DEMO, "--model", tokenizer_dir, "--label-pattern", r"ラベル: (\S+)", "--json",
                 "--epochs", "2", "--price-per-million", "8")
    stats = json.loads(result.stdout)
    assert stats["n_examples"] == 240 and stats["label_counts"]["ニュートラル"] == 80
    assert stats["training_tokens"] == 2 * stats["tokens_per_epoch"]
    assert stats["estimated_cost"] == pytest.approx(stats["training_tokens"] / 1e6 * 8, abs=1e-4)


def test_show_marks_exactly_the_assistant_tokens_as_trained(cli, tokenizer_dir):
    result = cli("data", "show", DEMO, "--model", tokenizer_dir, "-n", "2", "--json")
    examples = json.loads(result.stdout)["examples"]
    assert [example["line"] for example in examples] == [1, 2]
    first = examples[0]["sequences"][0]
    answer = json.loads(DEMO.read_text(encoding="utf-8").splitlines()[0])["messages"][-1]["content"]
    trained = [token for token in first["tokens"] if token["trained"]]
    assert trained[-2]["token"] == "<|im_end|>" and trained[-2]["special"]
    covered = sorted({i for token in trained for i in range(*token["span"])})
    assert "".join(first["text"][i] for i in covered) == answer + "<|im_end|>\n"
    assert first["n_trained"] == len(trained) < first["n_tokens"]


def test_show_renders_for_people(cli, tokenizer_dir):
    result = cli("data", "show", DEMO, "--model", tokenizer_dir, "-n", "1")
    assert result.exit_code == 0
    assert "special tokens: '<|im_start|>' ×3, '<|im_end|>' ×3" in result.stdout
    assert "first characters: '<|im_start|>system" in result.stdout


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.startswith("togi ")
