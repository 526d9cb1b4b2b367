"""Chat templates and loss masks: which tokens of a rendered conversation are trained on.

The training engine, ``togi data show`` and ``togi data stats`` all tokenize through this module, so
what a user inspects is exactly what the trainer sees.

A trained assistant message's span runs from the end of the generation prompt that precedes it to
the end of the message, its end-of-turn marker included; the tokenizer's offset mapping turns
character spans into a token mask. The spans are defined incrementally: the text of the messages
before assistant message *i* (with the generation prompt) must be a prefix of the text through
message *i*, and the characters in between are that message's span. This works for any template
that renders history unchanged, with or without ``{% generation %}`` markers.

Rendering every prefix costs time quadratic in the conversation's length, so the spans are found
another way first. A probe conversation, rendered once per template, shows what the template writes
around an assistant answer: the generation prompt, anything between it and the answer, and the
end-of-turn text after it. Where each assistant message (and nothing else) in the rendered text opens
with that prompt and each trained answer follows as it is, the spans are read off that one render.
Otherwise a second render with sentinel characters around each trained answer says where the answers
lie, if the sentinels change nothing else. Only where neither holds are the prefixes rendered.
"""

from __future__ import annotations

import bisect
import weakref
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from togi.data.examples import ChatExample, ClassificationExample, Example, KTOExample, Message, PreferenceExample
from togi.errors import TogiError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# ChatML, used when a tokenizer has no chat template of its own. The run records that it was used.
FALLBACK_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Unicode noncharacters, reserved for a program's internal use: real text does not hold them.
_OPEN, _CLOSE = "\ufdd0", "\ufdd1"


class ChatTemplateError(TogiError):
    """The model's template cannot be used to locate the trained tokens."""

    hint = "train on every token (data.train_on_prompt: true, or --train-on-prompt), or give the model a chat template that renders each turn once"


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
    return _render(tokenizer, [messages], tools, add_generation_prompt)[0]


def _render(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[Message]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = False,
) -> list[str]:
    """What ``tokenizer.apply_chat_template(..., tokenize=False)`` renders, through the function it calls
    itself: at half its cost per conversation (it also copies and checks the messages), which counts when
    a data set has a hundred thousand of them."""
    from transformers.utils.chat_template_utils import render_jinja_template

    template, _ = chat_template_of(tokenizer)
    rendered, _ = render_jinja_template(
        [[message.to_template_dict() for message in messages] for messages in conversations],
        tools=tools,
        chat_template=template,
        add_generation_prompt=add_generation_prompt,
        **tokenizer.special_tokens_map,
    )
    return rendered


@dataclass(frozen=True)
class RenderedText:
    """A text to tokenize: a rendered conversation with its trained character spans, or plain text
    (a classifier's input: no template, the tokenizer's own special tokens, nothing trained)."""

    text: str
    spans: list[tuple[int, int]]
    plain: bool = False


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


@dataclass(frozen=True)
class _TurnText:
    """What a template writes around an assistant answer, learned from a probe conversation: the
    generation prompt (``prompt``), then ``lead`` up to the answer (usually nothing), then ``tail``
    after it (its end-of-turn marker)."""

    prompt: str
    lead: str
    tail: str


# Per tokenizer, per template: the probe's result, or None when the template takes the prefix way only.
_turn_texts: weakref.WeakKeyDictionary[Any, dict[str, _TurnText | None]] = weakref.WeakKeyDictionary()


def _turn_text(tokenizer: PreTrainedTokenizerBase) -> _TurnText | None:
    template, _ = chat_template_of(tokenizer)
    known = _turn_texts.setdefault(tokenizer, {})
    if template not in known:
        known[template] = _probe_turn_text(tokenizer)
    return known[template]


def _probe_turn_text(tokenizer: PreTrainedTokenizerBase) -> _TurnText | None:
    question = [Message("user", "togi")]
    try:
        prompt, through = _render(tokenizer, [question, question + [Message("assistant", f"{_OPEN}togi{_CLOSE}")]])
        before = render_chat(tokenizer, question, add_generation_prompt=True)
    except Exception:  # a template is arbitrary code; this one is left to the prefix way
        return None
    if not (before.startswith(prompt) and through.startswith(before)) or through.count(_OPEN) != 1 or through.count(_CLOSE) != 1:
        return None
    opened, closed = through.index(_OPEN), through.index(_CLOSE)
    if opened < len(before):
        return None
    return _TurnText(prompt=before[len(prompt) :], lead=through[len(before) : opened], tail=through[closed + 1 :])


def trained_char_spans(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    tools: list[dict[str, Any]] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation; return the text and the character spans of trained assistant turns."""
    full = render_chat(tokenizer, messages, tools)
    return full, _trained_spans(tokenizer, messages, tools, full)


def _trained_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: list[dict[str, Any]] | None, full: str,
) -> list[tuple[int, int]]:
    trained = [position for position, message in enumerate(messages) if message.trained]
    if not trained:
        return []
    turn = _turn_text(tokenizer)
    spans = None
    if turn is not None:
        spans = _spans_from_openers(full, messages, turn)
        if spans is None:
            marked = render_chat(tokenizer, [_with_sentinels(message) for message in messages], tools)
            spans = _spans_from_sentinels(full, marked, len(trained), turn)
    if spans is None:
        spans = _spans_from_prefixes(tokenizer, messages, tools, full, trained)
    return spans


def _spans_from_openers(full: str, messages: list[Message], turn: _TurnText) -> list[tuple[int, int]] | None:
    """The spans from the text alone, where every assistant message, and nothing else, opens with the
    generation prompt and lead, and each trained answer follows as it is, then the tail; else None."""
    opener = turn.prompt + turn.lead
    assistants = [message for message in messages if message.role == "assistant"]
    if not turn.prompt or full.count(opener) != len(assistants):
        return None
    spans = []
    answer = 0
    for message in assistants:
        opened = full.index(opener, answer)
        answer = opened + len(opener)
        if not full.startswith(message.content, answer):
            return None
        if message.trained:
            end = answer + len(message.content)
            if not full.startswith(turn.tail, end):
                return None
            spans.append((opened + len(turn.prompt), end + len(turn.tail)))
    return spans


def _spans_from_sentinels(full: str, marked: str, count: int, turn: _TurnText) -> list[tuple[int, int]] | None:
    """The spans from a second render with sentinels around each of the ``count`` trained answers; None
    where the sentinels changed the rendering or the text around an answer is not the probe's."""
    if marked.count(_OPEN) != count or marked.count(_CLOSE) != count or marked.replace(_OPEN, "").replace(_CLOSE, "") != full:
        return None
    spans = []
    searched = 0
    for pair in range(count):
        opened, closed = marked.find(_OPEN, searched), marked.find(_CLOSE, searched)
        if not 0 <= opened < closed:
            return None
        start, end = opened - 2 * pair, closed - 2 * pair - 1  # where the answer lies in the text without sentinels
        if full[start - len(turn.lead) : start] != turn.lead or full[end : end + len(turn.tail)] != turn.tail:
            return None
        spans.append((start - len(turn.lead), end + len(turn.tail)))
        searched = closed + 1
    return spans


def _with_sentinels(message: Message) -> Message:
    return replace(message, content=f"{_OPEN}{message.content}{_CLOSE}") if message.trained else message


def _spans_from_prefixes(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: list[dict[str, Any]] | None, full: str, trained: list[int],
) -> list[tuple[int, int]]:
    """The spans by definition: two renders of a prefix per trained answer."""
    spans = []
    for position in trained:
        before = render_chat(tokenizer, messages[:position], tools, add_generation_prompt=True)
        through = render_chat(tokenizer, messages[: position + 1], tools)
        if not (through.startswith(before) and full.startswith(through)):
            raise ChatTemplateError(
                f"the chat template does not render the conversation incrementally at messages[{position}], "
                "so the assistant's tokens cannot be located; use --train-on-prompt, or a template that keeps history unchanged"
            )
        spans.append((len(before), len(through)))
    return spans


def tokenize_rendered(
    tokenizer: PreTrainedTokenizerBase,
    rendered: list[RenderedText],
    *,
    train_on_prompt: bool = False,
    max_length: int | None = None,
) -> list[TokenizedChat]:
    """Tokenize many texts with their loss masks, in one call of the tokenizer per kind of text (a
    call per text costs several times more)."""
    sequences: list[TokenizedChat | None] = [None] * len(rendered)
    for plain in (False, True):
        indices = [index for index, item in enumerate(rendered) if item.plain is plain]
        if not indices:
            continue
        encoding = tokenizer([rendered[index].text for index in indices], add_special_tokens=plain, return_offsets_mapping=True,
                             return_attention_mask=False, return_token_type_ids=False)
        for index, input_ids, offsets in zip(indices, encoding["input_ids"], encoding["offset_mapping"]):
            item = rendered[index]
            trained = [True] * len(input_ids) if train_on_prompt and not plain else _token_mask(offsets, item.spans)
            total = len(input_ids)
            if max_length is not None and total > max_length:
                input_ids, offsets, trained = input_ids[:max_length], offsets[:max_length], trained[:max_length]
            sequences[index] = TokenizedChat(text=item.text, input_ids=input_ids, offsets=offsets, trained=trained, length_before_truncation=total)
    return sequences  # type: ignore[return-value]


def _token_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token: does it start inside a span. Token offsets never decrease, so each span is a run of tokens."""
    starts = [start for start, _ in offsets]
    trained = [False] * len(starts)
    for start, end in spans:
        first, last = bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)
        trained[first:last] = [True] * (last - first)
    return trained


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
    return tokenize_rendered(tokenizer, [RenderedText(text, spans)], train_on_prompt=train_on_prompt, max_length=max_length)[0]


def render_example(tokenizer: PreTrainedTokenizerBase, example: Example) -> list[RenderedText]:
    """The texts an example becomes: one, or two for a preference pair (chosen, rejected); a classifier's text as it is."""
    [rendered] = render_examples(tokenizer, [example])
    if isinstance(rendered, Exception):
        raise rendered
    return rendered


def render_examples(tokenizer: PreTrainedTokenizerBase, examples: list[Example]) -> list[list[RenderedText] | Exception]:
    """``render_example`` of each example, or the exception its chat template raised for it."""
    results: list[list[RenderedText] | Exception] = [
        [RenderedText(example.text, [], plain=True)] if isinstance(example, ClassificationExample) else [] for example in examples]
    conversations = [(position, messages, tools) for position, example in enumerate(examples)
                     if not isinstance(example, ClassificationExample) for messages, tools in _conversations(example)]
    texts = _render_each(tokenizer, [(messages, tools) for _, messages, tools in conversations])
    for (position, messages, tools), text in zip(conversations, texts):
        result = results[position]
        if isinstance(result, Exception):
            continue
        if isinstance(text, Exception):
            results[position] = text
            continue
        try:
            result.append(RenderedText(text, _trained_spans(tokenizer, messages, tools, text)))
        except Exception as error:  # ChatTemplateError, or the template refusing a prefix or the sentinels
            results[position] = error
    return results


def _render_each(tokenizer: PreTrainedTokenizerBase, conversations: list[tuple[list[Message], list[dict[str, Any]] | None]]) -> list[str | Exception]:
    """Each conversation rendered, or the exception the template raised for it. Without tools they go
    through the template in one call (one call each costs 40% more), unless one of them makes it raise."""
    if conversations and all(tools is None for _, tools in conversations):
        try:
            return _render(tokenizer, [messages for messages, _ in conversations])  # type: ignore[return-value]
        except Exception:  # a conversation the template refuses: rendered one by one below to tell which
            pass
    texts: list[str | Exception] = []
    for messages, tools in conversations:
        try:
            texts.append(render_chat(tokenizer, messages, tools))
        except Exception as error:
            texts.append(error)
    return texts


def _conversations(example: Example) -> list[tuple[list[Message], list[dict[str, Any]] | None]]:
    """The conversations (messages, tools) a chat, preference or KTO example becomes."""
    if isinstance(example, ChatExample):
        return [(example.messages, example.tools)]
    if isinstance(example, PreferenceExample):
        return [(example.prompt + answer, example.tools) for answer in (example.chosen, example.rejected)]
    if isinstance(example, KTOExample):
        return [(example.messages, None)]
    raise TypeError(f"not an example: {type(example).__name__}")


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: Example,
    *,
    train_on_prompt: bool = False,
    max_length: int | None = None,
) -> list[TokenizedChat]:
    """The token sequences an example becomes: one, or two for a preference pair (chosen, rejected)."""
    return tokenize_rendered(tokenizer, render_example(tokenizer, example), train_on_prompt=train_on_prompt, max_length=max_length)
