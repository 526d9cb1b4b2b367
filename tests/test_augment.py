"""`togi data augment`: paraphrases and back-translations from a real (tiny) model, checked before they are kept."""

from __future__ import annotations

import json
import re

import pytest

from togi.data.augment import (AugmentError, clean_translation, paraphrase_messages, parse_language_pair, parse_paraphrases, rejection,
                               same_script, translation_messages)

from conftest import chat, distinct_chats, judge_server, noise_texts, train_constant_chat_model, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
KEPT, REPEATED = "届く日を知りたいです。", "配送予定日を教えてください。"
PARAPHRASES = json.dumps([REPEATED, "", KEPT], ensure_ascii=False)  # what the tiny model always answers when asked to paraphrase
INTO_ENGLISH, INTO_JAPANESE = "Please tell me the delivery date.", "お届け日を教えてください。"
FIRST = "在庫はありますか？商品番号12について教えてください。"
INPUTS = [FIRST, REPEATED] + [row["messages"][0]["content"] for row in distinct_chats(8)]


@pytest.fixture(scope="module")
def augmenter(tmp_path_factory, tokenizer):
    """A tiny model trained to answer each request with one fixed text: PARAPHRASES to a paraphrase request,
    INTO_ENGLISH to a Japanese-to-English translation, INTO_JAPANESE to an English-to-Japanese one."""
    import random

    rng, noise = random.Random(0), noise_texts(seed=2)
    words = "the quick brown fox jumps over lazy dog please tell me when my order will arrive can I return this item".split()
    japanese = INPUTS + [row["messages"][0]["content"] for row in distinct_chats(24)[8:]] + [next(noise) for _ in range(6)]
    english = [INTO_ENGLISH] + [" ".join(rng.choice(words) for _ in range(rng.randint(1, 10))).capitalize() + "." for _ in range(31)]
    records = []
    for text, english_text in zip(japanese, english):
        records += [{"messages": [*paraphrase_messages(text, 3), {"role": "assistant", "content": PARAPHRASES}]},
                    {"messages": [*translation_messages(text, "ja", "en"), {"role": "assistant", "content": INTO_ENGLISH}]},
                    {"messages": [*translation_messages(english_text, "en", "ja"), {"role": "assistant", "content": INTO_JAPANESE}]}]
    return train_constant_chat_model(tmp_path_factory.mktemp("augmenter"), tokenizer, records, max_steps=200)


def chat_file(tmp_path, inputs=INPUTS):
    """Chat examples, the last without a final newline (as editors often leave it)."""
    path = write_jsonl(tmp_path / "train.jsonl", [chat(text, f"回答{i}: ご質問の件、担当者が確認します。") for i, text in enumerate(inputs)])
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    return path


def synthetic_rows(path, after):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[after:]]


def test_paraphrases_keep_originals_byte_identical_and_only_new_checked_inputs(cli, tmp_path, augmenter, tokenizer_dir):
    source = chat_file(tmp_path)
    original = source.read_bytes()
    out = tmp_path / "train.aug.jsonl"
    with judge_server(augmenter) as url:
        result = cli("data", "augment", source, out, "--paraphrases", "3", "--url", url, "--model", "tiny")
    assert result.exit_code == 0, result.output
    assert source.read_bytes() == original and out.read_bytes().startswith(original + b"\n")  # IN untouched; OUT starts with it
    # Per example: REPEATED, "" and KEPT. Only KEPT for the first example survives: REPEATED is the second example's input
    # (unchanged there, a duplicate elsewhere), "" is empty, and KEPT once kept is a duplicate for the others.
    first_answer = {"role": "assistant", "content": "回答0: ご質問の件、担当者が確認します。"}
    assert synthetic_rows(out, after=10) == [{"messages": [{"role": "user", "content": KEPT}, first_answer],
                                              "togi": {"synthetic": "paraphrase", "source_line": 1}}]
    assert "(30 generated, 1 kept, 29 rejected)" in result.stdout
    for count, reason in ((18, "duplicate"), (10, "empty"), (1, "unchanged")):
        assert f"rejected {count}: {reason} " in result.stdout
    check = cli("data", "check", out, "--model", tokenizer_dir, "--json")
    report = json.loads(check.stdout)
    assert check.exit_code == 0 and report["stats"]["n_examples"] == 11
    assert "unrecognized_key" not in {finding["code"] for finding in report["findings"]}


def test_the_training_reader_accepts_the_marked_rows(cli, tmp_path, augmenter, tokenizer):
    from togi.config import load_config
    from togi.train.data import load_training_data

    source = chat_file(tmp_path)
    out = tmp_path / "train.aug.jsonl"
    result = cli("data", "augment", source, out, "--paraphrases", "3", "--model", augmenter)  # the same model, in-process
    assert result.exit_code == 0, result.output
    config = load_config(None, ["model=unused", f"data.train_file={out}", "data.val_ratio=0"])
    data = load_training_data(config, tokenizer, seed=0)
    assert [example.messages[0].content for example in data.train] == INPUTS + [KEPT]


def test_back_translation_asks_twice_per_example_with_the_right_languages(cli, tmp_path, augmenter):
    source = chat_file(tmp_path, INPUTS[:3])
    out, log = tmp_path / "out.jsonl", tmp_path / "requests.jsonl"
    with judge_server(augmenter, log=log) as url:
        result = cli("data", "augment", source, out, "--back-translate", "ja:en", "--url", url, "--model", "tiny")
    assert result.exit_code == 0, result.output
    requests = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert len(requests) == 6
    for text, there, back in zip(INPUTS[:3], requests[0::2], requests[1::2]):
        assert there["messages"][-1]["content"] == f"Translate this text from Japanese into English:\n\n{text}"
        assert there["reply"] == INTO_ENGLISH
        assert back["messages"][-1]["content"] == f"Translate this text from English into Japanese:\n\n{INTO_ENGLISH}"
    (row,) = synthetic_rows(out, after=3)
    assert row["messages"][0]["content"] == INTO_JAPANESE and row["togi"] == {"synthetic": "back_translation", "pivot": "en", "source_line": 1}
    assert "(3 generated, 1 kept, 2 rejected)" in result.stdout and "rejected 2: duplicate" in result.stdout


def test_classification_texts_are_paraphrased_and_keep_their_label(cli, tmp_path, augmenter):
    source = write_jsonl(tmp_path / "labels.jsonl", [{"text": text, "label": f"label{i % 2}"} for i, text in enumerate(INPUTS[:3])])
    out = tmp_path / "out.jsonl"
    result = cli("data", "augment", source, out, "--paraphrases", "3", "--model", augmenter)
    assert result.exit_code == 0, result.output
    assert synthetic_rows(out, after=3) == [{"text": KEPT, "label": "label0", "togi": {"synthetic": "paraphrase", "source_line": 1}}]


def test_bad_input_is_named_by_file_and_line_and_nothing_is_written(cli, tmp_path):
    source = tmp_path / "train.jsonl"
    source.write_text(json.dumps(chat("在庫はありますか？", "はい")) + '\n{"messages": [\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = cli("data", "augment", source, out, "--paraphrases", "2", "--url", "http://127.0.0.1:9/v1", "--model", "x")
    assert result.exit_code == 1 and f"{source}:2" in result.stderr and "[invalid_json]" in result.stderr and not out.exists()


@pytest.mark.parametrize("arguments,message", [
    (["IN", "IN", "--paraphrases", "2", "--model", "x"], "OUT is IN"),
    (["IN", "out.csv", "--paraphrases", "2", "--model", "x"], "augment reads and writes JSONL"),
    (["IN", "out.jsonl", "--model", "x"], "nothing to generate"),
    (["IN", "out.jsonl", "--paraphrases", "2"], "augmentation needs a model"),
    (["IN", "out.jsonl", "--back-translate", "ja", "--model", "x"], "is not SOURCE:PIVOT"),
    (["IN", "out.jsonl", "--paraphrases", "2", "--url", "http://127.0.0.1:9/v1", "--model", "x"], "cannot reach the augmentation model"),
    (["PAIRS", "out.jsonl", "--paraphrases", "2", "--model", "x"], "holds preference examples"),
])
def test_usage_errors_are_one_line_with_a_hint(cli, tmp_path, arguments, message):
    files = {"IN": chat_file(tmp_path, INPUTS[:2]),
             "PAIRS": write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "在庫は？", "chosen": "はい", "rejected": "不明"}])}
    result = cli("data", "augment", *[files.get(argument, tmp_path / argument if argument.startswith("out") else argument) for argument in arguments])
    assert result.exit_code == 2 and message in result.stderr and "hint:" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out.jsonl").exists()


SOURCE, ANSWER = "返品の送料は誰が負担しますか？", "初期不良の場合は当社が負担いたします。"


@pytest.mark.parametrize("candidate,reason", [
    ("送料は誰が負担するのでしょうか。", None),
    ("  ", "empty"),
    ("？", "empty"),
    ("返品の送料は、誰が負担しますか", "unchanged"),  # punctuation and spaces do not make it new
    ("返品の送料は誰が払いますか？", "duplicate"),
    ("送料" * 40, "too_long"),
    ("送料", "too_short"),
    ("Who pays for return shipping?", "wrong_script"),
    ("送料について：初期不良の場合は当社が負担いたします。", "answer_copied"),
    ("送料は誰が負担しますか？ラベル: 返品", "label_leak"),
])
def test_each_generated_input_is_checked_before_it_is_kept(candidate, reason):
    seen = {"返品の送料は誰が払いますか"}
    assert rejection(candidate, SOURCE, ANSWER, seen, re.compile(r"ラベル: (\S+)")) == reason


def test_script_checks_allow_latin_names_inside_japanese():
    assert same_script("iPhone 15の在庫はありますか？", "iPhone 15 Pro Maxは在庫ありますか")
    assert not same_script("Is the iPhone 15 in stock?", "iPhone 15の在庫はありますか？")


def test_model_replies_are_read_leniently():
    assert parse_paraphrases('Sure!\n```json\n["在庫はありますか？", "在庫ある？",]\n```') == ["在庫はありますか？", "在庫ある？"]
    assert parse_paraphrases("1. 在庫はありますか？\n2) 在庫ある？\n- 在庫の有無は？") == ["在庫はありますか？", "在庫ある？", "在庫の有無は？"]
    assert parse_paraphrases("I cannot help with that.") == []
    assert clean_translation('```\n"Is it in stock?"\n```') == "Is it in stock?" and clean_translation("「在庫は？」") == "在庫は？"
    assert parse_language_pair(" JA:en ") == ("ja", "en")
    with pytest.raises(AugmentError):
        parse_language_pair("ja:ja")
