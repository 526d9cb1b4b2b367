"""Chat templates and loss masks: exactly the assistant answers (and their end-of-turn token) are trained on."""

from __future__ import annotations

import pytest

from togi.data.examples import Message
from togi.data.template import FALLBACK_CHAT_TEMPLATE, ChatTemplateError, chat_template_of, tokenize_chat

from conftest import CHATML_WITH_DEFAULT_SYSTEM, build_tokenizer


def trained_text(sequence) -> str:
    """The characters covered by trained tokens, in order."""
    covered = sorted({position for (start, end), trained in zip(sequence.offsets, sequence.trained) if trained for position in range(start, end)})
    return "".join(sequence.text[position] for position in covered)


CONVERSATION = [
    Message("system", "丁寧に答えてください。"),
    Message("user", "返品できますか？"),
    Message("assistant", "はい、できます。"),
    Message("user", "送料は？"),
    Message("assistant", "当社が負担します。"),
]


def test_only_assistant_answers_and_their_end_marker_are_trained(tokenizer):
    sequence = tokenize_chat(tokenizer, CONVERSATION)
    assert trained_text(sequence) == "はい、できます。<|im_end|>\n当社が負担します。<|im_end|>\n"
    assert sequence.text.startswith("<|im_start|>system\n丁寧に答えてください。<|im_end|>")
    assert sequence.input_ids == tokenizer(sequence.text, add_special_tokens=False)["input_ids"]


def test_weight_zero_answers_are_context_only(tokenizer):
    messages = CONVERSATION[:2] + [Message("assistant", "はい、できます。", weight=0)] + CONVERSATION[3:]
    assert trained_text(tokenize_chat(tokenizer, messages)) == "当社が負担します。<|im_end|>\n"


def test_train_on_prompt_trains_every_token(tokenizer):
    sequence = tokenize_chat(tokenizer, CONVERSATION, train_on_prompt=True)
    assert all(sequence.trained) and sequence.n_trained == sequence.n_tokens


def test_a_template_that_adds_a_default_system_prompt_still_masks_correctly():
    tokenizer = build_tokenizer(CHATML_WITH_DEFAULT_SYSTEM)
    sequence = tokenize_chat(tokenizer, CONVERSATION[1:3])
    assert "You are a helpful assistant." in sequence.text
    assert trained_text(sequence) == "はい、できます。<|im_end|>\n"


def test_a_tokenizer_without_a_template_uses_the_recorded_fallback():
    tokenizer = build_tokenizer(chat_template=None)
    assert chat_template_of(tokenizer) == (FALLBACK_CHAT_TEMPLATE, True)
    sequence = tokenize_chat(tokenizer, CONVERSATION[1:3])
    assert sequence.text == "<|im_start|>user\n返品できますか？<|im_end|>\n<|im_start|>assistant\nはい、できます。<|im_end|>\n"
    assert trained_text(sequence) == "はい、できます。<|im_end|>\n"


def test_truncation_keeps_the_start_and_records_the_original_length(tokenizer):
    full = tokenize_chat(tokenizer, CONVERSATION)
    cut = tokenize_chat(tokenizer, CONVERSATION, max_length=10)
    assert cut.n_tokens == 10 and cut.length_before_truncation == full.n_tokens and cut.truncated
    assert cut.input_ids == full.input_ids[:10] and cut.trained == full.trained[:10]


def test_a_template_that_rewrites_history_is_refused_with_a_clear_error():
    # Drops earlier assistant turns once a later one exists, as some reasoning-model templates do.
    rewriting = ("{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
                 "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    with pytest.raises(ChatTemplateError, match=r"messages\[2\]"):
        tokenize_chat(build_tokenizer(rewriting), CONVERSATION)
