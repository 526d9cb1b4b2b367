"""Every input format converts at the edge into the canonical examples; odd shapes are findings."""

from __future__ import annotations

import pytest

from togi.data.examples import ChatExample, ClassificationExample, ExampleKind, KTOExample, PreferenceExample
from togi.data.findings import Severity
from togi.data.formats import LoadOptions, detect_shape, load_dataset

from conftest import BROKEN, chat, codes_and_lines, write_jsonl


def roles_and_contents(example):
    return [(m.role, m.content) for m in example.messages]


def test_openai_chat_keeps_weights_tools_and_tool_calls(tmp_path):
    tool_call = {"id": "call_1", "type": "function", "function": {"name": "stock", "arguments": "{\"sku\": \"A1\"}"}}
    record = {
        "messages": [
            {"role": "user", "content": "A1の在庫は？"},
            {"role": "assistant", "content": "確認します。", "weight": 0},
            {"role": "assistant", "content": None, "tool_calls": [tool_call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"stock\": 3}"},
            {"role": "assistant", "content": "在庫は3点です。", "weight": 1},
        ],
        "tools": [{"type": "function", "function": {"name": "stock", "parameters": {"type": "object"}}}],
        "parallel_tool_calls": False,
    }
    dataset = load_dataset(write_jsonl(tmp_path / "chat.jsonl", [record]))
    assert dataset.format == "chat" and not dataset.findings
    example = dataset.examples[0]
    assert isinstance(example, ChatExample)
    assert [m.weight for m in example.messages] == [None, 0, None, None, 1]
    assert [m.trained for m in example.messages] == [False, False, True, False, True]
    assert example.messages[2].tool_calls == [tool_call] and example.messages[2].content == ""
    assert example.tools == record["tools"] and example.parallel_tool_calls is False


def test_alpaca_joins_instruction_and_input_and_keeps_history_and_system(tmp_path):
    record = {"instruction": "英訳してください", "input": "ありがとう", "output": "Thank you.", "system": "翻訳者です。",
              "history": [["こんにちは", "Hello."]]}
    example = load_dataset(write_jsonl(tmp_path / "a.jsonl", [record])).examples[0]
    assert roles_and_contents(example) == [
        ("system", "翻訳者です。"), ("user", "こんにちは"), ("assistant", "Hello."),
        ("user", "英訳してください\nありがとう"), ("assistant", "Thank you."),
    ]


@pytest.mark.parametrize("keys", [("input", "output"), ("prompt", "completion"), ("question", "answer")])
def test_input_output_pairs_become_a_user_and_an_assistant_message(tmp_path, keys):
    dataset = load_dataset(write_jsonl(tmp_path / "p.jsonl", [{keys[0]: "質問です", keys[1]: "回答です。"}]))
    assert dataset.format == "pairs"
    assert roles_and_contents(dataset.examples[0]) == [("user", "質問です"), ("assistant", "回答です。")]


def test_trl_conversational_prompt_completion_is_accepted(tmp_path):
    record = {"prompt": [{"role": "system", "content": "短く答える。"}, {"role": "user", "content": "首都は？"}],
              "completion": [{"role": "assistant", "content": "東京です。"}]}
    example = load_dataset(write_jsonl(tmp_path / "p.jsonl", [record])).examples[0]
    assert roles_and_contents(example) == [("system", "短く答える。"), ("user", "首都は？"), ("assistant", "東京です。")]


def test_csv_with_renamed_columns_and_a_system_prompt(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text("質問,回答\n返品できますか？,三十日以内なら可能です。\n", encoding="utf-8")
    options = LoadOptions(input_column="質問", output_column="回答", system="サポート担当です。")
    example = load_dataset(path, options).examples[0]
    assert roles_and_contents(example) == [("system", "サポート担当です。"), ("user", "返品できますか？"), ("assistant", "三十日以内なら可能です。")]


def test_csv_without_the_expected_columns_is_one_finding_naming_the_header():
    dataset = load_dataset(BROKEN / "custom_columns.csv")
    missing = [f for f in dataset.findings if f.code == "csv_missing_column"]
    assert len(missing) == 1 and missing[0].line == 1 and "質問" in missing[0].message
    assert "--input-column" in missing[0].hint


def test_tsv_is_read_with_tabs(tmp_path):
    path = tmp_path / "faq.tsv"
    path.write_text("question\tanswer\n返品は、できますか？\tはい、できます。\n", encoding="utf-8")
    assert roles_and_contents(load_dataset(path).examples[0])[0] == ("user", "返品は、できますか？")


def test_trl_preference_pairs_with_strings_and_with_an_implicit_prompt(tmp_path):
    explicit = {"prompt": "首都は？", "chosen": "東京です。", "rejected": "大阪です。"}
    implicit = {
        "chosen": [{"role": "user", "content": "首都は？"}, {"role": "assistant", "content": "東京です。"}],
        "rejected": [{"role": "user", "content": "首都は？"}, {"role": "assistant", "content": "大阪です。"}],
    }
    dataset = load_dataset(write_jsonl(tmp_path / "pref.jsonl", [explicit, implicit]))
    assert dataset.kind is ExampleKind.PREFERENCE and not dataset.findings
    for example in dataset.examples:
        assert isinstance(example, PreferenceExample)
        assert [m.content for m in example.prompt] == ["首都は？"]
        assert [m.content for m in example.chosen] == ["東京です。"] and [m.content for m in example.rejected] == ["大阪です。"]


def test_openai_dpo_form_becomes_a_preference_example(tmp_path):
    record = {"input": {"messages": [{"role": "user", "content": "首都は？"}]},
              "preferred_output": [{"role": "assistant", "content": "東京です。"}],
              "non_preferred_output": [{"role": "assistant", "content": "大阪です。"}]}
    dataset = load_dataset(write_jsonl(tmp_path / "dpo.jsonl", [record]))
    assert dataset.format == "openai_dpo" and isinstance(dataset.examples[0], PreferenceExample)


def test_openai_dpo_problems_name_the_field():
    dataset = load_dataset(BROKEN / "preference.jsonl")
    assert codes_and_lines(dataset.findings) == {("identical_pair", 4), ("wrong_type", 5), ("unrecognized_role", 6)}
    assert next(f for f in dataset.findings if f.line == 6).field == "non_preferred_output[0].role"


@pytest.mark.parametrize("label,expected", [(True, True), (False, False), ("true", True), ("0", False)])
def test_kto_labels(tmp_path, label, expected):
    dataset = load_dataset(write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "首都は？", "completion": "東京です。", "label": label}]))
    example = dataset.examples[0]
    assert isinstance(example, KTOExample) and example.label is expected


def test_kto_label_that_is_not_a_boolean_is_a_finding(tmp_path):
    dataset = load_dataset(write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "首都は？", "completion": "東京です。", "label": "maybe"}]))
    assert codes_and_lines(dataset.findings) == {("invalid_label", 1)} and not dataset.examples


def test_classification_text_and_label(tmp_path):
    dataset = load_dataset(write_jsonl(tmp_path / "cls.jsonl", [{"text": "とても良い", "label": "positive"}, {"text": "最悪", "label": 0}]))
    assert [(e.text, e.label) for e in dataset.examples if isinstance(e, ClassificationExample)] == [("とても良い", "positive"), ("最悪", "0")]


def test_a_file_mixing_shapes_flags_the_odd_record_instead_of_guessing():
    dataset = load_dataset(BROKEN / "mixed.jsonl")
    assert dataset.format == "chat"
    assert codes_and_lines(dataset.findings) == {("mixed_formats", 4)}
    assert len(dataset.examples) == 8


def test_format_override_reads_every_record_as_that_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "訳して", "input": "犬", "output": "dog"}])
    assert roles_and_contents(load_dataset(path, LoadOptions(format="pairs")).examples[0]) == [("user", "犬"), ("assistant", "dog")]


def test_a_record_with_no_known_keys_is_an_unknown_format(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "x", "label": "a"}, {"foo": 1}])
    assert codes_and_lines(load_dataset(path).findings) == {("unknown_format", 2)}


def test_content_parts_of_text_are_joined_and_images_are_refused(tmp_path):
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "こん"}, {"type": "text", "text": "にちは"}]},
                          {"role": "assistant", "content": "どうも。"}]}
    image = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                          {"role": "assistant", "content": "犬です。"}]}
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", [parts, image]))
    assert dataset.examples[0].messages[0].content == "こんにちは"
    assert codes_and_lines(dataset.findings) == {("content_not_string", 2)}


def test_developer_role_gets_a_hint_to_use_system(tmp_path):
    record = {"messages": [{"role": "developer", "content": "丁寧に"}, {"role": "user", "content": "やあ"}, {"role": "assistant", "content": "こんにちは"}]}
    finding = load_dataset(write_jsonl(tmp_path / "d.jsonl", [record])).findings[0]
    assert finding.code == "unrecognized_role" and "system" in finding.hint


def test_every_assistant_message_weighted_zero_leaves_nothing_to_train(tmp_path):
    record = {"messages": [{"role": "user", "content": "やあ"}, {"role": "assistant", "content": "こんにちは", "weight": 0}]}
    assert codes_and_lines(load_dataset(write_jsonl(tmp_path / "d.jsonl", [record])).findings) == {("nothing_to_train", 1)}


@pytest.mark.parametrize("record,shape", [
    (chat("a", "b"), "chat"),
    ({"messages": [], "label": True}, "kto"),
    ({"instruction": "a", "output": "b"}, "alpaca"),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference"),
    ({"input": {}, "preferred_output": [], "non_preferred_output": []}, "openai_dpo"),
    ({"prompt": "a", "completion": "b", "label": False}, "kto"),
    ({"text": "a", "label": "b"}, "classification"),
    ({"question": "a", "answer": "b"}, "pairs"),
    ({"foo": "a"}, None),
    ([1], None),
])
def test_shape_detection_from_keys(record, shape):
    assert detect_shape(record) == shape


@pytest.mark.parametrize("message,field", [
    ({"role": "assistant", "function_call": 5}, "messages[1].function_call"),
    ({"role": "assistant", "function_call": {"name": "stock"}}, "messages[1].function_call"),
    ({"role": "assistant", "content": "確認します。", "tool_call_id": {"id": 1}}, "messages[1].tool_call_id"),
])
def test_tool_fields_of_the_wrong_type_are_findings(tmp_path, message, field):
    record = {"messages": [{"role": "user", "content": "A1の在庫は？"}, message, {"role": "assistant", "content": "三点です。"}]}
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert [(f.code, f.line, f.field) for f in dataset.findings] == [("wrong_type", 1, field)] and not dataset.examples


def test_a_valid_function_call_stands_in_for_the_content(tmp_path):
    record = {"messages": [{"role": "user", "content": "A1の在庫は？"}, {"role": "assistant", "function_call": {"name": "stock", "arguments": "{}"}},
                           {"role": "function", "name": "stock", "content": "3"}, {"role": "assistant", "content": "三点です。"}]}
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", [record]))
    assert not dataset.findings and len(dataset.examples) == 1


def test_a_record_with_two_prompt_answer_pairs_says_which_one_is_ignored(tmp_path):
    record = {"input": "質問です", "output": "回答です。", "prompt": "別の質問", "completion": "別の回答。"}
    dataset = load_dataset(write_jsonl(tmp_path / "p.jsonl", [record]))
    [finding] = dataset.findings
    assert (finding.code, finding.severity, finding.field) == ("ambiguous_keys", Severity.WARNING, "prompt")
    assert roles_and_contents(dataset.examples[0]) == [("user", "質問です"), ("assistant", "回答です。")]
