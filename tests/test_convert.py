"""Conversion between formats: lossless where the target can hold the example, refused where it cannot."""

from __future__ import annotations

import json

from togi.data.formats import load_dataset

from conftest import BROKEN, chat, write_jsonl


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_alpaca_to_openai_chat_jsonl_with_a_system_prompt(cli, tmp_path):
    source = write_jsonl(tmp_path / "a.json", [])
    source.write_text(json.dumps([{"instruction": "英訳して", "input": "犬", "output": "dog"}], ensure_ascii=False), encoding="utf-8")
    result = cli("data", "convert", source, tmp_path / "out.jsonl", "--system", "翻訳者です。")
    assert result.exit_code == 0, result.output
    assert read_jsonl(tmp_path / "out.jsonl") == [{"messages": [
        {"role": "system", "content": "翻訳者です。"}, {"role": "user", "content": "英訳して\n犬"}, {"role": "assistant", "content": "dog"}]}]
    assert "翻訳者" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")  # not \\u escapes


def test_shift_jis_csv_to_chat_jsonl(cli, tmp_path):
    result = cli("data", "convert", BROKEN / "shift_jis.csv", tmp_path / "faq.jsonl", "--encoding", "cp932")
    assert result.exit_code == 0, result.output
    records = read_jsonl(tmp_path / "faq.jsonl")
    assert len(records) == 10 and records[0]["messages"][0] == {"role": "user", "content": "この炊飯器は玄米モードがありますか？"}


def test_chat_round_trips_through_csv_and_alpaca(cli, tmp_path):
    records = [chat("返品できますか？", "はい、できます。", system="サポートです。"), chat("送料は？", "無料です。", system="サポートです。")]
    source = write_jsonl(tmp_path / "chat.jsonl", records)
    assert cli("data", "convert", source, tmp_path / "faq.csv").exit_code == 0
    assert (tmp_path / "faq.csv").read_text(encoding="utf-8").splitlines()[0] == "question,answer,system"
    assert cli("data", "convert", tmp_path / "faq.csv", tmp_path / "alpaca.jsonl", "--to", "alpaca").exit_code == 0
    assert read_jsonl(tmp_path / "alpaca.jsonl")[0] == {"instruction": "返品できますか？", "input": "", "output": "はい、できます。", "system": "サポートです。"}
    assert cli("data", "convert", tmp_path / "alpaca.jsonl", tmp_path / "back.jsonl").exit_code == 0
    assert read_jsonl(tmp_path / "back.jsonl") == records


def test_a_conversation_with_weights_cannot_become_pairs_and_nothing_is_written(cli, tmp_path):
    record = {"messages": [{"role": "user", "content": "やあ"}, {"role": "assistant", "content": "どうも", "weight": 0},
                           {"role": "user", "content": "元気？"}, {"role": "assistant", "content": "元気です。"}]}
    source = write_jsonl(tmp_path / "chat.jsonl", [record])
    result = cli("data", "convert", source, tmp_path / "pairs.jsonl", "--to", "pairs")
    assert result.exit_code == 1
    assert "not_convertible" in result.stderr and "nothing was written" in result.stderr
    assert not (tmp_path / "pairs.jsonl").exists()


def test_openai_dpo_and_trl_preference_convert_both_ways(cli, tmp_path):
    record = {"input": {"messages": [{"role": "user", "content": "首都は？"}]},
              "preferred_output": [{"role": "assistant", "content": "東京です。"}],
              "non_preferred_output": [{"role": "assistant", "content": "大阪です。"}]}
    source = write_jsonl(tmp_path / "dpo.jsonl", [record])
    assert cli("data", "convert", source, tmp_path / "trl.jsonl").exit_code == 0
    assert read_jsonl(tmp_path / "trl.jsonl") == [{"prompt": [{"role": "user", "content": "首都は？"}],
                                                   "chosen": [{"role": "assistant", "content": "東京です。"}],
                                                   "rejected": [{"role": "assistant", "content": "大阪です。"}]}]
    assert cli("data", "convert", tmp_path / "trl.jsonl", tmp_path / "back.jsonl", "--to", "openai_dpo").exit_code == 0
    assert read_jsonl(tmp_path / "back.jsonl") == [record]


def test_converting_across_kinds_is_a_usage_error(cli, tmp_path):
    source = write_jsonl(tmp_path / "c.jsonl", [{"text": "良い", "label": "pos"}])
    result = cli("data", "convert", source, tmp_path / "x.jsonl", "--to", "chat")
    assert result.exit_code == 2 and "classification examples cannot be written as chat" in result.stderr


def test_kto_prompt_completion_survives_conversion(tmp_path, cli):
    source = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "首都は？", "completion": "東京です。", "label": True}])
    assert cli("data", "convert", source, tmp_path / "out.jsonl").exit_code == 0
    example = load_dataset(tmp_path / "out.jsonl").examples[0]
    assert [(m.role, m.content) for m in example.messages] == [("user", "首都は？"), ("assistant", "東京です。")] and example.label is True
