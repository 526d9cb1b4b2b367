"""`check_dataset`: each broken file yields the right codes on the right lines."""

from __future__ import annotations

import hashlib

from togi.data.findings import Severity
from togi.data.formats import load_dataset
from togi.data.labels import compile_label_pattern
from togi.data.validate import CheckOptions, check_dataset

from conftest import BROKEN, DEMO, chat, codes_and_lines, distinct_chats, write_jsonl


def check(path, tokenizer=None, **options):
    return check_dataset(load_dataset(path), tokenizer, CheckOptions(**options))


def test_openai_rules_file_has_one_finding_per_broken_line():
    report = check(BROKEN / "openai_rules.jsonl")
    assert codes_and_lines(report.findings) == {
        ("too_few_examples", None),
        ("not_an_object", 2),
        ("missing_messages", 3),
        ("message_missing_key", 4),
        ("unrecognized_key", 5),
        ("unrecognized_role", 6),
        ("content_not_string", 7),
        ("empty_content", 8),
        ("missing_assistant", 9),
        ("weight_not_allowed", 10),
        ("invalid_weight", 11),
        ("invalid_json", 12),
        ("blank_line", 13),
        ("wrong_type", 14),
        ("unrecognized_key", 15),
        ("duplicate", 16),
    }
    by_line = {f.line: f for f in report.findings}
    assert by_line[4].field == "messages[1].role" and by_line[4].message_index == 1 and by_line[4].example == 3
    assert by_line[5].field == "messages[1].thoughts" and by_line[5].severity is Severity.ERROR
    assert by_line[15].severity is Severity.WARNING  # an unknown top-level key is ignored, not fatal
    assert "line 1" in by_line[16].message
    assert all(f.hint for f in report.findings)
    assert not report.ok


def test_quality_file_finds_japanese_near_duplicates_conflicts_short_texts_and_system_drift():
    report = check(BROKEN / "quality.jsonl")
    assert codes_and_lines(report.findings) == {
        ("too_few_examples", None),
        ("near_duplicate", 9),
        ("conflicting_duplicate", 10),
        ("short_input", 11),
        ("short_output", 12),
        ("inconsistent_system_prompt", 13),
        ("near_duplicate", 15),
    }
    assert report.ok  # warnings only


def test_label_imbalance_over_five_to_one():
    report = check(BROKEN / "imbalanced.jsonl")
    imbalance = [f for f in report.findings if f.code == "label_imbalance"]
    assert len(imbalance) == 1 and "6.0x" in imbalance[0].message


def test_labels_extracted_from_chat_answers_with_a_pattern(tmp_path):
    records = [chat(f"レビュー{i}: とても良い商品でした", "ラベル: ポジティブ") for i in range(12)] + [chat("レビュー: 最悪の商品でした", "ラベル: ネガティブ")]
    report = check(write_jsonl(tmp_path / "r.jsonl", records), label_pattern=compile_label_pattern(r"ラベル: (\S+)"),
                   near_duplicate_threshold=1.01)
    assert report.stats.label_counts == {"ポジティブ": 12, "ネガティブ": 1}
    assert "label_imbalance" in {f.code for f in report.findings}


def test_fewer_than_ten_examples_is_an_error_and_fewer_than_fifty_a_warning(tmp_path):
    few = check(write_jsonl(tmp_path / "few.jsonl", distinct_chats(9)))
    some = check(write_jsonl(tmp_path / "some.jsonl", distinct_chats(10)))
    enough = check(write_jsonl(tmp_path / "enough.jsonl", distinct_chats(50)))
    assert [(f.code, f.severity) for f in few.findings] == [("too_few_examples", Severity.ERROR)]
    assert [(f.code, f.severity) for f in some.findings] == [("too_few_examples", Severity.WARNING)]
    assert enough.findings == []


def test_too_long_counts_real_tokens_through_the_chat_template(tmp_path, tokenizer):
    records = distinct_chats(10) + [chat("長い質問です。" * 40, "短い答え。")]
    report = check(write_jsonl(tmp_path / "long.jsonl", records), tokenizer, max_length=128)
    assert ("too_long", 11) in codes_and_lines(report.findings)
    assert report.stats.n_over_max_length == 1


def test_text_spelling_a_control_token_is_flagged(tmp_path, tokenizer):
    records = distinct_chats(10) + [chat("この文字列 <|im_end|> は何ですか？", "制御トークンです。")]
    report = check(write_jsonl(tmp_path / "special.jsonl", records), tokenizer)
    assert ("special_token_in_content", 11) in codes_and_lines(report.findings)


def test_a_conversation_the_chat_template_refuses_is_a_template_error(tmp_path):
    from conftest import ALTERNATING_ONLY, build_tokenizer

    records = distinct_chats(10) + [{"messages": [{"role": "user", "content": "こんにちは。"}, {"role": "user", "content": "聞こえますか？"},
                                                  {"role": "assistant", "content": "はい、聞こえます。"}]}]
    report = check(write_jsonl(tmp_path / "t.jsonl", records), build_tokenizer(ALTERNATING_ONLY))
    errors = [f for f in report.findings if f.code == "template_error"]
    assert [(f.line, f.severity) for f in errors] == [(11, Severity.ERROR)] and "alternate" in errors[0].message


def test_the_demo_data_set_is_clean_and_balanced():
    report = check(DEMO, label_pattern=compile_label_pattern(r"ラベル: (\S+)"))
    assert report.findings == []
    assert report.stats.n_examples >= 200
    assert report.stats.label_counts == {"ポジティブ": 80, "ネガティブ": 80, "ニュートラル": 80}


def test_checking_never_modifies_the_input(tokenizer):
    for path in sorted(BROKEN.iterdir()):
        before = hashlib.sha256(path.read_bytes()).hexdigest()
        check(path, tokenizer)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == before, path


def test_a_conversation_opening_with_an_answer_to_train_on_is_a_finding_not_a_template_failure(tmp_path, tokenizer):
    opening = [{"role": "assistant", "content": "いらっしゃいませ。"}, {"role": "user", "content": "在庫はありますか？"},
               {"role": "assistant", "content": "はい、三点あります。"}]
    as_context = [dict(opening[0], weight=0)] + opening[1:]
    report = check(write_jsonl(tmp_path / "d.jsonl", distinct_chats(10) + [{"messages": opening}, {"messages": as_context}]), tokenizer)
    [finding] = [f for f in report.findings if f.severity is Severity.ERROR]
    assert (finding.code, finding.line, finding.field) == ("assistant_first", 11, "messages[0].role")
    assert report.stats.n_examples == 11  # the greeting kept as context (weight 0) is fine


def test_classification_data_with_a_single_label_cannot_train_a_classifier(tmp_path):
    records = [{"text": f"レビュー{i}: とても良い商品でした", "label": "positive"} for i in range(50)]
    report = check(write_jsonl(tmp_path / "c.jsonl", records), near_duplicate_threshold=1.01)
    assert [(f.code, f.severity) for f in report.findings] == [("single_label", Severity.ERROR)]
