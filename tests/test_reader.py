"""Reading files: every broken line becomes a finding with its line number; only an unreadable file raises."""

from __future__ import annotations

import json

import pytest

from togi.data.findings import Severity
from togi.data.reader import MAX_RECORD_BYTES, DataFileError, read_records

from conftest import BROKEN, codes_and_lines


def test_jsonl_records_keep_their_line_numbers_across_blank_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    result = read_records(path)
    assert [(record.line, record.index, record.value) for record in result.records] == [(1, 0, {"a": 1}), (3, 1, {"a": 2})]
    assert codes_and_lines(result.findings) == {("blank_line", 2)}
    assert result.findings[0].severity is Severity.INFO


def test_a_byte_order_mark_is_noted_and_skipped_and_a_cut_off_last_line_is_named():
    result = read_records(BROKEN / "bom_truncated.jsonl")
    assert len(result.records) == 4
    assert codes_and_lines(result.findings) == {("utf8_bom", 1), ("invalid_json", 5)}
    cut_off = next(f for f in result.findings if f.code == "invalid_json")
    assert "cut off" in cut_off.message and "truncated" in cut_off.hint


def test_invalid_json_names_the_line_and_column(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n{"a": 1,, }\n{"a": 3}\n', encoding="utf-8")
    result = read_records(path)
    assert codes_and_lines(result.findings) == {("invalid_json", 2)}
    assert "column 9" in result.findings[0].message
    assert len(result.records) == 2


def test_nan_is_not_valid_json(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": NaN}\n', encoding="utf-8")
    assert codes_and_lines(read_records(path).findings) == {("invalid_json", 1)}


def test_shift_jis_bytes_are_reported_per_line_with_a_cp932_hint():
    result = read_records(BROKEN / "shift_jis.csv")
    bad = [f for f in result.findings if f.code == "invalid_encoding"]
    assert bad and bad[0].line == 2
    assert "cp932" in bad[0].hint
    assert len(read_records(BROKEN / "shift_jis.csv", encoding="cp932").records) == 10


def test_a_huge_line_is_refused_without_parsing_and_the_rest_is_read(tmp_path):
    path = tmp_path / "huge.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        handle.write('{"a": 1}\n')
        handle.write(json.dumps({"text": "あ" * (50 * 2**20 // 3)}, ensure_ascii=False) + "\n")  # about 50 MB
        handle.write('{"a": 3}\n')
    assert path.stat().st_size > MAX_RECORD_BYTES
    result = read_records(path)
    assert codes_and_lines(result.findings) == {("line_too_large", 2)}
    assert [record.line for record in result.records] == [1, 3]


def test_a_json_array_gives_each_element_its_starting_line():
    result = read_records(BROKEN / "bad_array.json")
    assert [record.line for record in result.records] == [2, 18, 19, 33]
    assert result.container == "json"


def test_a_json_file_with_one_object_per_line_is_read_as_jsonl(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    result = read_records(path)
    assert result.container == "jsonl" and len(result.records) == 2


def test_an_unclosed_json_array_is_a_finding(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2}\n', encoding="utf-8")
    result = read_records(path)
    assert len(result.records) == 2
    assert [f.code for f in result.findings] == ["invalid_json"]


def test_csv_rows_start_at_their_first_line_even_with_quoted_newlines():
    result = read_records(BROKEN / "custom_columns.csv")
    assert result.csv_header == ["質問", "回答", "メモ"]
    assert result.records[-1].line == 10 and result.records[-1].value["質問"] == "改行を含む\n質問です"
    assert codes_and_lines(result.findings) == {("csv_field_count", 12)}


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_an_empty_file_is_a_finding(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    assert [f.code for f in read_records(path).findings] == ["empty_file"]


def test_a_directory_a_missing_file_and_an_unknown_extension_raise_one_clear_error(tmp_path):
    with pytest.raises(DataFileError, match="is a directory"):
        read_records(tmp_path)
    with pytest.raises(DataFileError, match="no such file"):
        read_records(tmp_path / "missing.jsonl")
    (tmp_path / "data.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataFileError, match="extension"):
        read_records(tmp_path / "data.txt")


def test_json_nested_too_deeply_is_a_finding_not_a_crash(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n" + '{"a": 1}\n', encoding="utf-8")
    result = read_records(path)
    assert codes_and_lines(result.findings) == {("invalid_json", 1)} and len(result.records) == 1


def test_a_json_object_wrapping_the_examples_says_where_they_are(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": [{"a": 1}]}, indent=2), encoding="utf-8")
    findings = read_records(path).findings
    assert [f.code for f in findings] == ["not_an_array"] and "'data'" in findings[0].hint


def test_utf16_is_named_with_the_fix(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("question,answer\n質問,回答\n".encode("utf-16"))
    findings = read_records(path).findings
    assert [f.code for f in findings] == ["invalid_encoding"] and "utf-16" in findings[0].hint
    assert read_records(path, encoding="utf-16").records[0].value == {"question": "質問", "answer": "回答"}


@pytest.mark.parametrize("line,field", [
    ('{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
    ('{"messages": [{"role": "user", "content": "ok", "\\udc00": 1}]}', "messages[0].\\udc00"),
    ('{"text": "ok", "label": "\\ud83d"}', "label"),
    ('"\\udfff"', None),
])
def test_a_lone_surrogate_escape_in_a_key_or_a_value_is_invalid_unicode_on_its_line(tmp_path, line, field):
    path = tmp_path / "data.jsonl"
    path.write_text('{"a": 1}\n' + line + '\n{"emoji": "\\ud83d\\ude00"}\n', encoding="utf-8")  # a surrogate pair is a character
    result = read_records(path)
    assert [(f.code, f.line, f.field) for f in result.findings] == [("invalid_unicode", 2, field)]
    assert [record.line for record in result.records] == [1, 3] and result.records[1].value == {"emoji": "😀"}
    str(result.findings[0]).encode("utf-8")  # the finding itself can be printed


def test_a_lone_surrogate_in_a_json_array_element_names_the_element(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"text": "ok", "label": "a"},\n  {"text": "\\ud800", "label": "b"}\n]\n', encoding="utf-8")
    result = read_records(path)
    assert [(f.code, f.line, f.field) for f in result.findings] == [("invalid_unicode", 3, "text")] and len(result.records) == 1


def test_a_bad_byte_in_a_json_array_is_reported_on_its_own_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b'[\n  {"a": 1},\n  {"a": "\xff"}\n]\n')
    [finding] = read_records(path).findings
    assert (finding.code, finding.line) == ("invalid_encoding", 3) and "byte 10 of the line" in finding.message


@pytest.mark.parametrize("content,line", [("[\n", 1), ('[\n  {"a": 1},\n', 2), ('[\n  {"a": 1},\n  {"a":\n', 3), ('[\n  {"a": 1},\n  {"a": 2\n\n', 3)])
def test_a_cut_off_json_array_is_reported_on_its_last_line(tmp_path, content, line):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    assert [(f.code, f.line) for f in read_records(path).findings] == [("invalid_json", line)]


def test_a_trailing_comma_in_a_json_array_is_invalid_json_on_its_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"a": 1},\n  {"a": 2},\n]\n', encoding="utf-8")
    result = read_records(path)
    assert codes_and_lines(result.findings) == {("invalid_json", 3)} and "comma" in result.findings[0].message
    assert len(result.records) == 2  # both elements are still read


def test_a_csv_row_of_only_delimiters_is_skipped_with_a_warning(tmp_path):
    path = tmp_path / "faq.csv"
    path.write_text("question,answer\n返品は？,できます。\n,\n\n , \n送料は？,無料です。\n", encoding="utf-8")
    result = read_records(path)
    assert [(f.code, f.severity, f.line) for f in result.findings] == [("empty_row", Severity.WARNING, 3), ("empty_row", Severity.WARNING, 5)]
    assert [record.line for record in result.records] == [2, 6]
