"""Text from files, paths, models and users reaches the terminal literally: rich markup such as
``[llama]``, ``[/]``, ``[/INST]`` or ``[UNK]`` is printed as written, and text the terminal cannot
encode (a lone surrogate, a file name's undecodable bytes) becomes a visible escape, never a traceback."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from togi.cli.main import app

from conftest import chat, distinct_chats, write_jsonl

SOURCE = Path(__file__).resolve().parents[1] / "src" / "togi"
MARKUP_WORDS = ["[llama]", "[/]", "[/INST]", "[UNK]", "[bold]"]
SURROGATE_NAME = os.fsdecode(b"reviews-\xff.jsonl")  # a file name that is not UTF-8: '\udcff' in Python


def run(*args: object):
    """The CLI in-process with a wide terminal, so that no word is wrapped."""
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "500"}, catch_exceptions=False)


def labelled_records(label: str) -> list[dict]:
    return [chat(record["messages"][0]["content"], f"ラベル: {label} 理由: {record['messages'][1]['content']}")
            for record in distinct_chats(12)]


def test_every_console_of_the_cli_comes_from_the_one_escaping_point():
    for path in SOURCE.rglob("*.py"):
        if path.name == "terminal.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"\bConsole\(", text), f"{path} builds its own rich Console: use togi.cli.terminal.make_console"
        assert "markup=True" not in text and "rich.markup" not in text, f"{path} prints with rich markup: use rich.text.Text styles"
        assert "typer.echo(" not in text and "sys.stdout.write(" not in text, f"{path} writes to stdout itself: use togi.cli.terminal.echo"


@pytest.mark.parametrize("word", MARKUP_WORDS)
def test_a_data_path_and_a_label_that_look_like_markup_are_printed_as_written(tmp_path, word):
    directory = tmp_path / word.split("/")[0]
    file = directory / ((word.split("/")[1] if "/" in word else "") + "reviews.jsonl")
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(file, labelled_records(word))
    result = run("data", "check", file, "--label-pattern", r"ラベル: (\S+)")
    assert result.exit_code == 0, result.output
    assert f"{file}: 0 errors" in result.stdout  # the verdict names the file exactly
    assert f"{word} 12 (100%)" in result.stdout  # the label row of the statistics
    stats = run("data", "stats", file, "--label-pattern", r"ラベル: (\S+)")
    assert stats.exit_code == 0 and f"{word} 12 (100%)" in stats.stdout


def test_a_finding_quotes_the_files_own_text_literally(tmp_path):
    records = distinct_chats(12)
    records[3]["messages"][0]["role"] = "[UNK]"
    file = write_jsonl(tmp_path / "roles.jsonl", records)
    result = run("data", "check", file)
    assert result.exit_code == 1
    assert f"{file}:4" in result.stdout and "unrecognized role '[UNK]'" in result.stdout


def test_an_error_line_names_a_missing_file_literally(tmp_path):
    missing = tmp_path / "[llama]" / "[/INST].jsonl"
    result = run("data", "check", missing)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(missing) in result.stderr


def test_a_recipe_error_names_a_recipe_path_with_brackets(tmp_path):
    recipe = tmp_path / "[" / "]recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text("lora:\n  rank: 8\n", encoding="utf-8")
    result = run("train", recipe)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{recipe}:2 lora.rank" in result.stderr


def test_data_show_prints_template_text_with_brackets(tmp_path, tokenizer_dir):
    file = write_jsonl(tmp_path / "inst.jsonl", [chat("[INST] 在庫は？ [/INST] [UNK]", "[llama] あります。")])
    result = run("data", "show", file, "--model", tokenizer_dir, "--full")
    assert result.exit_code == 0, result.output
    assert "[INST] 在庫は？ [/INST] [UNK]" in result.stdout and "[llama] あります。" in result.stdout


def test_a_file_name_that_is_not_utf8_is_shown_as_an_escape_and_the_json_parses(tmp_path):
    file = tmp_path / SURROGATE_NAME
    write_jsonl(file, distinct_chats(12))
    result = run("data", "check", file)
    assert result.exit_code == 0, result.output
    assert "reviews-\\udcff.jsonl: 0 errors" in result.stdout
    as_json = run("data", "check", file, "--json")
    assert as_json.exit_code == 0
    assert as_json.stdout_bytes.decode("utf-8")  # valid UTF-8
    assert json.loads(as_json.stdout)["file"] == str(file)  # the escape reads back as the same name


def test_samples_and_chat_answers_with_brackets_and_a_surrogate_arrive_intact(capsys):
    from togi.cli.terminal import echo, make_console
    from togi.train.samples import Sample, render_samples

    render_samples(make_console(), [Sample(prompt="[INST] hi [/INST]", reference="[llama]", base="[/]", tuned="[UNK] \ud800")])
    echo("model> [/INST] \ud800")
    printed = capsys.readouterr().out
    for word in ["[INST] hi [/INST]", "[llama]", "[/]", "[UNK] \\ud800", "model> [/INST] \\ud800"]:
        assert word in printed
