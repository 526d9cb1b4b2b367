"""Chat templates and loss masks: exactly the assistant answers (and their end-of-turn token) are trained on."""

from __future__ import annotations

import random

import pytest

from togi.data.examples import Message
from togi.data.template import FALLBACK_CHAT_TEMPLATE, ChatTemplateError, chat_template_of, render_chat, tokenize_chat, trained_char_spans

from conftest import CHATML, CHATML_WITH_DEFAULT_SYSTEM, build_tokenizer


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


LLAMA3_LIKE = (  # trims each message, as Llama 3's template does
    "{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '<|im_end|>\\n\\n' + m['content'] | trim + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_end|>\\n\\n' }}{% endif %}"
)
MISTRAL_LIKE = (  # no generation prompt: an answer follows the question's closing tag
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
    "{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + eos_token }}{% else %}{{ m['content'] + '\\n' }}{% endif %}{% endfor %}"
)
TOOL_CALLS = (  # writes an assistant's tool calls after its content
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}{% if m.tool_calls %}"
    "{{ '<tool_call>' + m.tool_calls | tojson + '</tool_call>' }}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TRICKY_CONTENTS = ["はい、できます。", "assistant", "user", " 前後に空白 ", "末尾に改行\n", "<|im_start|>assistant\nはい", "[/INST] そうです",
                   "同じ答え", "同じ答え", "\ufdd0印\ufdd1", "x"]


def spans_by_definition(tokenizer, messages):
    """The loss-mask spans as the module docstring defines them: prefix renders, two per trained answer."""
    full = render_chat(tokenizer, messages)
    spans = []
    for position, message in enumerate(messages):
        if message.trained:
            before = render_chat(tokenizer, messages[:position], add_generation_prompt=True)
            through = render_chat(tokenizer, messages[: position + 1])
            if not (through.startswith(before) and full.startswith(through)):
                return None
            spans.append((len(before), len(through)))
    return full, spans


def random_conversation(rng, with_tool_calls=False):
    messages = [Message("system", rng.choice(TRICKY_CONTENTS))] if rng.random() < 0.3 else []
    for _ in range(rng.randint(1, 6)):
        messages.append(Message("user", rng.choice(TRICKY_CONTENTS)))
        calls = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}] if with_tool_calls and rng.random() < 0.3 else None
        messages.append(Message("assistant", rng.choice(TRICKY_CONTENTS), weight=rng.choice([None, None, 0]), tool_calls=calls))
    return messages


@pytest.mark.parametrize("template", [CHATML, CHATML_WITH_DEFAULT_SYSTEM, None, LLAMA3_LIKE, MISTRAL_LIKE, TOOL_CALLS])
def test_spans_found_in_one_render_are_those_of_the_prefix_definition(template):
    tokenizer = build_tokenizer(template)
    rng = random.Random(0)
    for _ in range(60):
        messages = random_conversation(rng, with_tool_calls=template == TOOL_CALLS)
        expected = spans_by_definition(tokenizer, messages)
        if expected is None:
            with pytest.raises(ChatTemplateError):
                trained_char_spans(tokenizer, messages)
        else:
            assert trained_char_spans(tokenizer, messages) == expected, messages


def test_a_long_conversation_is_rendered_a_fixed_number_of_times_not_once_per_turn(monkeypatch):
    from transformers.utils import chat_template_utils

    rendered = []
    render = chat_template_utils.render_jinja_template

    def counting(conversations, *args, **kwargs):
        rendered.extend(conversations)
        return render(conversations, *args, **kwargs)

    monkeypatch.setattr(chat_template_utils, "render_jinja_template", counting)
    messages = [Message("user" if turn % 2 == 0 else "assistant", f"発言{turn}") for turn in range(1000)]
    sequence = tokenize_chat(build_tokenizer(), messages)
    assert trained_text(sequence) == "".join(f"発言{turn}<|im_end|>\n" for turn in range(1, 1000, 2))
    assert len(rendered) == 4  # three to probe a new template, then the conversation once
