"""Statistics: code points for characters, the real tokenizer for tokens, and the cost arithmetic."""

from __future__ import annotations

from togi.data.formats import load_dataset
from togi.data.stats import compute_stats
from togi.data.template import tokenize_chat

from conftest import chat, write_jsonl


def test_characters_are_code_points_not_bytes(tmp_path):
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", [chat("日本語の質問です", "はい、回答。", system="システム")]))
    stats = compute_stats(dataset)
    assert stats.characters.max == len("日本語の質問です") + len("はい、回答。") == 14  # system prompt excluded


def test_token_figures_match_the_template_tokenization(tmp_path, tokenizer):
    records = [chat("返品できますか？", "はい、できます。"), chat("送料はいくらですか？", "全国一律五百円です。"), chat("領収書は？", "発行できます。")]
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", records))
    stats = compute_stats(dataset, tokenizer, epochs=2, price_per_million=10.0)
    sequences = [tokenize_chat(tokenizer, example.messages) for example in dataset.examples]
    counts = [sequence.n_tokens for sequence in sequences]
    assert stats.tokens.min == min(counts) and stats.tokens.max == max(counts)
    assert stats.tokens_per_epoch == sum(counts)
    assert stats.trained_tokens == sum(sequence.n_trained for sequence in sequences)
    assert stats.prompt_tokens == stats.tokens_per_epoch - stats.trained_tokens
    assert stats.training_tokens == 2 * sum(counts)
    assert abs(stats.estimated_cost - 2 * sum(counts) / 1e6 * 10.0) < 1e-12
    assert stats.role_counts == {"user": 3, "assistant": 3}


def test_examples_over_the_max_length_are_counted_and_billed_truncated(tmp_path, tokenizer):
    dataset = load_dataset(write_jsonl(tmp_path / "d.jsonl", [chat("長い" * 200, "短い答えです。"), chat("短い質問", "短い答え。")]))
    stats = compute_stats(dataset, tokenizer, max_length=64)
    assert stats.n_over_max_length == 1
    assert stats.tokens.max > 64
    assert stats.tokens_per_epoch <= 64 * 2


def test_preference_pairs_count_both_answers(tmp_path, tokenizer):
    dataset = load_dataset(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "首都は？", "chosen": "東京です。", "rejected": "大阪です。"}]))
    stats = compute_stats(dataset, tokenizer)
    example = dataset.examples[0]
    chosen = tokenize_chat(tokenizer, example.prompt + example.chosen)
    rejected = tokenize_chat(tokenizer, example.prompt + example.rejected)
    assert stats.tokens_per_epoch == chosen.n_tokens + rejected.n_tokens
    assert stats.trained_tokens == chosen.n_trained + rejected.n_trained


def test_label_distribution_of_classification_data(tmp_path):
    dataset = load_dataset(write_jsonl(tmp_path / "c.jsonl", [{"text": "良い", "label": "pos"}, {"text": "悪い", "label": "neg"}, {"text": "最高", "label": "pos"}]))
    assert compute_stats(dataset).label_counts == {"pos": 2, "neg": 1}
