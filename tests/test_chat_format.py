"""A chat template becomes an Ollama TEMPLATE that Go's text/template renders to exactly the same text."""

from __future__ import annotations

import pytest

from togi.export.chat_format import CHECK_CONVERSATIONS, ChatFormat, ChatFormatError

from conftest import (ALTERNATING_ONLY, CHATML, CHATML_WITH_DEFAULT_SYSTEM, GO_TEMPLATE_MISSING, build_tokenizer,
                      go_template_available, ollama_messages, render_go_template)

# Llama 3's shape: a BOS text before everything and a header per message; no trailing newline after the end marker.
LLAMA3_LIKE = (
    "{{ '<|im_start|>' }}{% for message in messages %}{{ '[' + message['role'] + ']\\n\\n' + message['content'] | trim + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '[assistant]\\n\\n' }}{% endif %}"
)
# A template whose literal text contains Go template delimiters, which must be escaped in the translation.
BRACES = (
    "{% for message in messages %}{{ '{{' + message['role'] + '}} ' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '{{assistant}} ' }}{% endif %}"
)
TEMPLATES = {"chatml": CHATML, "chatml with a default system prompt": CHATML_WITH_DEFAULT_SYSTEM,
             "header per message with a BOS text": LLAMA3_LIKE, "Go delimiters in the text": BRACES}
MORE_CONVERSATIONS = [
    [{"role": "system", "content": "ラベル: ポジティブ / ネガティブ"}, {"role": "user", "content": "最高でした！\n\nまた買います。"},
     {"role": "assistant", "content": "ラベル: ポジティブ"}, {"role": "user", "content": "{{ .Content }} は?"}],
]


@pytest.mark.parametrize("name", TEMPLATES)
def test_the_pieces_reproduce_the_template(name):
    tokenizer = build_tokenizer(TEMPLATES[name])
    chat_format = ChatFormat.from_template(tokenizer, TEMPLATES[name])
    assert chat_format.mismatch(tokenizer, TEMPLATES[name]) is None
    for conversation in CHECK_CONVERSATIONS + MORE_CONVERSATIONS:
        assert chat_format.render(conversation) == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)


def test_the_pieces_of_chatml_with_a_default_system_prompt():
    chat_format = ChatFormat.from_template(build_tokenizer(), CHATML_WITH_DEFAULT_SYSTEM)
    assert chat_format.head_without_system == "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    assert chat_format.head_with_system == "<|im_start|>system\n"
    assert chat_format.prefixes["user"] == "<|im_start|>user\n" and chat_format.suffixes["assistant"] == "<|im_end|>\n"
    assert chat_format.generation_prompt == "<|im_start|>assistant\n" and chat_format.end_of_turn == "<|im_end|>\n"


def test_a_template_that_is_not_fixed_pieces_is_refused_with_the_reason():
    with pytest.raises(ChatFormatError, match="refused a probe conversation: Conversation roles must alternate"):
        ChatFormat.from_template(build_tokenizer(), ALTERNATING_ONLY)


@pytest.mark.skipif(not go_template_available(), reason=GO_TEMPLATE_MISSING)
@pytest.mark.parametrize("name", TEMPLATES)
def test_go_text_template_renders_the_ollama_template_exactly_as_apply_chat_template(name):
    tokenizer = build_tokenizer(TEMPLATES[name])
    template = ChatFormat.from_template(tokenizer, TEMPLATES[name]).to_ollama_template()
    conversations = CHECK_CONVERSATIONS + MORE_CONVERSATIONS
    rendered = render_go_template(template, [ollama_messages(conversation) for conversation in conversations])
    for conversation, text in zip(conversations, rendered):
        assert text == tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
