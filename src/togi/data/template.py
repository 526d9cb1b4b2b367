"""Chat templates and loss masks: which tokens of a rendered conversation are trained on.

The training engine, ``togi data show`` and ``togi data stats`` all tokenize through this module, so
what a user inspects is exactly what the trainer sees.

The assistant spans are found by rendering the conversation incrementally: the text of the messages
before assistant message *i* (with the generation prompt) must be a prefix of the text through
message *i*. The characters in between (the answer and its end-of-turn marker) are that message's
span, and the tokenizer's offset mapping turns character spans into a token mask. This works for any
template that renders history unchanged, with or without ``{% generation %}`` markers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from togi.data.examples import ChatExample, ClassificationExample, Example, KTOExample, Message, PreferenceExample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# ChatML, used when a tokenizer has no chat template of its own. The run records that it was used.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


class ChatTemplateError(Exception):
    """The model's template cannot be used to locate the trained tokens."""


def chat_template_of(tokenizer: PreTrainedTokenizerBase) -> tuple[str, bool]:
    """The template to use and whether it is togi's fallback (the tokenizer had none)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: the default one is used for chat
        template = template.get("default")
    if template:
        return template, False
    return FALLBACK_CHAT_TEMPLATE, True


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> str:
    template, _ = chat_template_of(tokenizer)
    return tokenizer.apply_chat_template(
        [message.to_template_dict() for message in messages],
        tools=tools,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        tokenize=False,
    )


@dataclass
class TokenizedChat:
    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    trained: list[bool]  # per token: does the loss fall on it
    length_before_truncation: int

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)

    @property
    def n_trained(self) -> int:
        return sum(self.trained)

    @property
    def truncated(self) -> bool:
        return self.length_before_truncation > len(self.input_ids)


def trained_char_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation; return the text and the character spans of trained assistant turns."""
    full = render_chat(tokenizer, messages, tools)
    spans = []
    for position, message in enumerate(messages):
        if not message.trained:
            continue
        before = render_chat(tokenizer, messages[:position], tools, add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: position + 1], tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise ChatTemplateError(
                f"the chat template does not render the conversation incrementally at messages[{position}], "
                "so the assistant's tokens cannot be located; use --train-on-prompt, or a template that keeps history unchanged"
            )
        spans.append((len(before), len(through)))
    return full, spans


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
    *,
    train_on_prompt: bool = False,
    max_length: int | None = None,
) -> TokenizedChat:
    """Tokenize a conversation with its loss mask: assistant turns only, unless ``train_on_prompt``."""
    text, spans = trained_char_spans(tokenizer, messages, tools)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    if train_on_prompt:
        trained = [True] * len(input_ids)
    else:
        trained = [any(start <= token_start < end for start, end in spans) for token_start, _ in offsets]
    total = len(input_ids)
    if max_length is not None and total > max_length:
        input_ids, offsets, trained = input_ids[:max_length], offsets[:max_length], trained[:max_length]
    return TokenizedChat(text=text, input_ids=input_ids, offsets=offsets, trained=trained, length_before_truncation=total)


def tokenize_plain(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int | None = None) -> TokenizedChat:
    """Plain text (classification inputs): no template, nothing trained at the token level."""
    encoding = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    input_ids = list(encoding["input_ids"])
    offsets = [tuple(pair) for pair in encoding["offset_mapping"]]
    total = len(input_ids)
    if max_length is not None:
        input_ids, offsets = input_ids[:max_length], offsets[:max_length]
    return TokenizedChat(text=text, input_ids=input_ids, offsets=offsets, trained=[False] * len(input_ids), length_before_truncation=total)


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: Example,
    *,
    train_on_prompt: bool = False,
    max_length: int | None = None,
) -> list[TokenizedChat]:
    """The token sequences an example becomes: one, or two for a preference pair (chosen, rejected)."""
    if isinstance(example, ChatExample):
        return [tokenize_chat(tokenizer, example.messages, example.tools, train_on_prompt=train_on_prompt, max_length=max_length)]
    if isinstance(example, PreferenceExample):
        return [
            tokenize_chat(tokenizer, example.prompt + answer, example.tools, train_on_prompt=train_on_prompt, max_length=max_length)
            for answer in (example.chosen, example.rejected)
        ]
    if isinstance(example, KTOExample):
        return [tokenize_chat(tokenizer, example.messages, train_on_prompt=train_on_prompt, max_length=max_length)]
    if isinstance(example, ClassificationExample):
        return [tokenize_plain(tokenizer, example.text, max_length=max_length)]
    raise TypeError(f"not an example: {type(example).__name__}")
