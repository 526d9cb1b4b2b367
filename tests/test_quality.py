"""Duplicates: exact, near (after normalisation, without relying on spaces) and conflicting."""

from __future__ import annotations

import random

from togi.data.examples import ChatExample, Message, Source
from togi.data.formats import load_dataset
from togi.data.quality import comparable_text, find_duplicates, jaccard, near_duplicate_pairs, normalize_text, shingles

from conftest import chat, write_jsonl


def findings_for(tmp_path, records, threshold=0.8):
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", records))
    return [(f.code, f.line, f.message) for f in find_duplicates(dataset, threshold)]


def test_normalisation_folds_width_case_and_whitespace():
    assert normalize_text("ＳＩＺＥ　Ｍ の 着丈？") == normalize_text("size m の着丈") == "sizemの着丈"


def test_a_japanese_pair_differing_in_punctuation_is_a_near_duplicate(tmp_path):
    records = [
        chat("この炊飯器は玄米モードがありますか？", "はい、玄米モードと雑穀米モードを搭載しています。"),
        chat("今日の天気はどうですか？", "晴れのち曇りで、夕方から雨の予報です。"),
        chat("この炊飯器は、玄米モードがありますか", "はい。玄米モードと雑穀米モードを搭載しています！"),
    ]
    found = findings_for(tmp_path, records)
    assert [(code, line) for code, line, _ in found] == [("near_duplicate", 3)]
    assert "line 1" in found[0][2]


def test_unrelated_japanese_texts_sharing_a_template_are_not_near_duplicates(tmp_path):
    records = [
        chat("ワイヤレスイヤホンの音質について教えてください。", "低音が豊かで、ボーカルもはっきり聞こえます。"),
        chat("ランニングシューズのサイズ感について教えてください。", "普段より半サイズ大きめを選ぶと快適です。"),
    ]
    assert findings_for(tmp_path, records) == []


def test_exact_duplicates_name_the_first_occurrence(tmp_path):
    records = [chat("返品できますか？", "はい、できます。"), chat("別の質問ですか？", "はい、別です。"), chat("返品できますか？", "はい、できます。")]
    assert [(code, line) for code, line, _ in findings_for(tmp_path, records)] == [("duplicate", 3)]


def test_the_same_input_with_a_different_answer_is_a_conflict(tmp_path):
    records = [chat("保証期間は何年ですか？", "一年間です。"), chat("保証期間は何年ですか？", "三年間です。")]
    assert [(code, line) for code, line, _ in findings_for(tmp_path, records, threshold=1.01)] == [("conflicting_duplicate", 2)]


def test_shared_system_prompts_do_not_make_examples_look_alike(tmp_path):
    system = "あなたは商品レビューを分類するアシスタントです。ラベルと理由を一行ずつ答えてください。" * 3
    records = [chat("音が良い。", "ラベル: 良い", system), chat("壊れた。", "ラベル: 悪い", system)]
    assert findings_for(tmp_path, records) == []


def test_jaccard_of_character_shingles():
    assert jaccard(shingles("abcd"), shingles("abcd")) == 1.0
    assert jaccard(shingles("abcd"), shingles("wxyz")) == 0.0
    assert shingles("ab") == frozenset({"ab"})


def test_a_near_copy_is_found_among_thousands_of_examples(tmp_path):
    rng = random.Random(0)
    kana = [chr(code) for code in range(0x3042, 0x3094)] + [chr(code) for code in range(0x4E00, 0x4E80)]
    texts = ["".join(rng.choice(kana) for _ in range(60)) for _ in range(3000)]
    records = [chat(text[:40], text[40:]) for text in texts]
    copy = texts[42][:20] + "ー" + texts[42][21:]  # one character changed
    records.append(chat(copy[:40], copy[40:]))
    found = findings_for(tmp_path, records)
    assert [(code, line) for code, line, _ in found] == [("near_duplicate", 3001)]
    assert "line 43" in found[0][2]


def test_among_short_rows_sharing_their_words_the_index_finds_what_comparing_every_pair_finds():
    # Short texts from a small vocabulary crowd a few LSH buckets: the work per example is capped, the result is not.
    rng = random.Random(1)
    words = "order ship today arrive battery charge screen return refund price 注文 発送 到着 返品 在庫".split()
    rows = [(" ".join(rng.choices(words, k=4)) + f" {i}?", " ".join(rng.choices(words, k=4)) + ".") for i in range(800)]
    for _ in range(100):  # near copies: one character of the answer changed
        question, answer = rng.choice(rows)
        cut = rng.randrange(len(answer) - 1)
        rows.append((question, answer[:cut] + "x" + answer[cut + 1 :]))
    examples = [ChatExample([Message("user", question), Message("assistant", answer)], Source("d.jsonl", line, line - 1))
                for line, (question, answer) in enumerate(rows, start=1)]
    sets = [shingles(normalize_text(comparable_text(example))) for example in examples]
    every_pair = {}
    for later in range(len(sets)):
        for earlier in range(later):
            similarity = jaccard(sets[later], sets[earlier])
            if similarity >= 0.8 and similarity > every_pair.get(later, (0.0, -1))[0]:
                every_pair[later] = (similarity, earlier)
    found = {later.source.index: (similarity, earlier.source.index) for later, earlier, similarity in near_duplicate_pairs(examples, 0.8)}
    assert len(found) > 80 and found == every_pair
