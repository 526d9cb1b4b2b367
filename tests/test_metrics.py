"""Metrics against hand-computed values, Japanese included."""

from __future__ import annotations

import re

import pytest

from togi.evaluate.metrics import (
    LabelExtractor,
    accuracy_and_macro_f1,
    bleu_tokenizer,
    corpus_bleu,
    corpus_chrf,
    exact_match,
    rouge_l,
    tokenize_for_overlap,
)


def test_exact_match_after_nfkc_case_and_whitespace():
    assert exact_match("ＡＢＣ　１２３", "abc 123") == 1.0
    assert exact_match(" ラベル: ポジティブ\n", "ラベル: ポジティブ") == 1.0
    assert exact_match("ラベル: ネガティブ", "ラベル: ポジティブ") == 0.0


def test_overlap_tokens_are_characters_for_japanese_and_words_otherwise():
    assert tokenize_for_overlap("今日は晴れ、GPT-4 rocks!") == ["今", "日", "は", "晴", "れ", "gpt", "4", "rocks"]
    assert tokenize_for_overlap("ｶﾀｶﾅ") == ["カ", "タ", "カ", "ナ"]  # half-width katakana folded by NFKC


def test_rouge_l_for_japanese_matches_the_longest_common_subsequence_by_hand():
    # prediction 今日は晴れです (7 characters), reference 今日は雨です (6); LCS 今日はです = 5
    precision, recall = 5 / 7, 5 / 6
    assert rouge_l("今日は晴れです", "今日は雨です") == pytest.approx(2 * precision * recall / (precision + recall))
    assert rouge_l("全く別の文章", "今日は雨です") == 0.0


def test_rouge_score_default_tokenizer_would_score_japanese_zero():
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rougeL"]).score("今日は雨です", "今日は雨です")["rougeL"].fmeasure
    assert default == 0.0 and rouge_l("今日は雨です", "今日は雨です") == 1.0


def test_rouge_l_in_english_uses_words():
    # prediction "the cat sat", reference "the cat sat down": LCS 3 words
    assert rouge_l("The cat sat", "the cat sat down") == pytest.approx(2 * 1.0 * 0.75 / 1.75)


def test_bleu_tokenises_japanese_by_character():
    assert bleu_tokenizer(["今日は雨です"]) == "char" and bleu_tokenizer(["it rains"]) == "13a"
    assert corpus_bleu(["今日は雨です"], ["今日は雨です"]) == pytest.approx(100.0)
    # Whole-sentence "words" would give 0; characters share the 4-grams 今日は雨 / 日は雨で / は雨です.
    partial = corpus_bleu(["今日は雨です。"], ["今日は雨です"])
    assert 0 < partial < 100
    import sacrebleu

    assert sacrebleu.corpus_bleu(["今日は雨です。"], [["今日は雨です"]], tokenize="13a").score == 0.0


def test_chrf_of_identical_and_disjoint_texts():
    assert corpus_chrf(["今日は雨です"], ["今日は雨です"]) == pytest.approx(100.0)
    assert corpus_chrf(["あいうえお"], ["かきくけこ"]) == 0.0


def test_labels_from_a_pattern_or_a_list():
    pattern = LabelExtractor(pattern=re.compile(r"ラベル: (\S+)"))
    assert pattern("ラベル: ポジティブ\n理由: 良い。") == "ポジティブ"
    assert pattern("ラベル： ネガティブ") == "ネガティブ"  # the full-width colon is folded by NFKC
    assert pattern("わかりません") is None
    listed = LabelExtractor(labels=("positive", "negative"))
    assert listed("I think negative, not positive") == "negative"  # the first one mentioned


def test_accuracy_and_macro_f1_by_hand():
    # expected a a b b, predicted a b b (none): accuracy 2/4; F1(a) = 2*1*0.5/1.5, F1(b) = 0.5
    accuracy, macro_f1 = accuracy_and_macro_f1(["a", "b", "b", None], ["a", "a", "b", "b"])
    assert accuracy == 0.5
    assert macro_f1 == pytest.approx((2 / 3 + 0.5) / 2)
