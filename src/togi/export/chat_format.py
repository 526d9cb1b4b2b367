"""A chat template as plain text pieces, and its translation into an Ollama (Go ``text/template``) TEMPLATE.

A Jinja chat template can do anything, but the ones models ship wrap each message in fixed text that
depends on its role, add a header before the first message (a BOS token, or a default system prompt
when the conversation has none), and end with a generation prompt. ``ChatFormat.from_template`` finds
those pieces by rendering probe conversations with sentinel contents, the same way the trainer finds
assistant spans: by rendering the conversation one message at a time and taking the differences.

``ChatFormat.render`` renders a conversation from the pieces in Python, and ``ChatFormat.mismatch``
compares it with ``apply_chat_template`` on a set of check conversations; the export refuses a template
whose pieces do not reproduce it. ``ChatFormat.to_ollama_template`` writes the same pieces as a Go
template over Ollama's ``.Messages``. The tests render that text with Go's own ``text/template`` engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from togi.errors import TogiError

ROLES = ("system", "user", "assistant")
SENTINEL = "TOGIPROBE{}Q"

# Conversations the pieces must reproduce exactly before a translation is trusted.
CHECK_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "こんにちは"}],
    [{"role": "system", "content": "あなたは丁寧な店員です。"}, {"role": "user", "content": "在庫は\nありますか？"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "返品できますか？"}],
    [{"role": "user", "content": "一"}, {"role": "assistant", "content": "二"}, {"role": "user", "content": "三"},
     {"role": "assistant", "content": "四"}, {"role": "user", "content": "五"}],
]


class ChatFormatError(TogiError):
    """The template does not fit the fixed-pieces form, so it cannot be translated faithfully."""

    hint = "export with --to gguf, which carries the chat template itself instead of translating it"


@dataclass(frozen=True)
class ChatFormat:
    head_with_system: str  # text before the first message's content when that message is the system prompt
    head_without_system: str  # text before the first message when there is no system prompt (BOS, a default system prompt)
    prefixes: dict[str, str]  # role -> text before the content of a later message
    suffixes: dict[str, str]  # role -> text after the content
    generation_prompt: str  # text that opens the assistant's answer

    @classmethod
    def from_template(cls, tokenizer: Any, template: str) -> ChatFormat:
        def render(messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
            try:
                return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                     add_generation_prompt=generation_prompt)
            except Exception as error:  # the template raised (for example: roles must alternate)
                raise ChatFormatError(f"the template refused a probe conversation: {error}") from None

        def wrapped(messages: list[dict[str, str]], index: int) -> tuple[str, str]:
            """The text before and after message ``index``'s content, given the messages before it."""
            before = render(messages[:index]) if index else ""
            through = render(messages[: index + 1])
            if not through.startswith(before):
                raise ChatFormatError("the template renders earlier messages differently once a message is added")
            chunk, content = through[len(before):], messages[index]["content"]
            if chunk.count(content) != 1:
                raise ChatFormatError(f"the template does not show a {messages[index]['role']} message's content exactly once")
            prefix, suffix = chunk.split(content)
            return prefix, suffix

        probe = [{"role": role, "content": SENTINEL.format(i)} for i, role in enumerate(["system", "user", "assistant", "user", "assistant"])]
        prefixes, suffixes = {}, {}
        for role, index in (("user", 3), ("assistant", 4)):
            prefixes[role], suffixes[role] = wrapped(probe, index)
        head_with_system, suffixes["system"] = wrapped(probe, 0)
        head_without_system, user_suffix = wrapped(probe[1:], 0)
        if user_suffix != suffixes["user"] or not head_without_system.endswith(prefixes["user"]):
            raise ChatFormatError("the first user message is wrapped differently from later ones")
        head_without_system = head_without_system[: len(head_without_system) - len(prefixes["user"])]
        # A system message after the first one: assume it is wrapped like the first, without the header.
        prefixes["system"] = head_with_system[len(_common_prefix(head_with_system, head_without_system)):] or head_with_system
        opened = render(probe[:2], generation_prompt=True)
        closed = render(probe[:2])
        if not opened.startswith(closed):
            raise ChatFormatError("the generation prompt changes the text before it")
        return cls(head_with_system, head_without_system, prefixes, suffixes, opened[len(closed):])

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        parts = []
        for index, message in enumerate(messages):
            role = message["role"]
            if index == 0:
                parts.append(self.head_with_system if role == "system" else self.head_without_system + self.prefixes[role])
            else:
                parts.append(self.prefixes[role])
            parts.append(message["content"] + self.suffixes[role])
        if add_generation_prompt and messages and messages[-1]["role"] != "assistant":
            parts.append(self.generation_prompt)
        return "".join(parts)

    def mismatch(self, tokenizer: Any, template: str) -> str | None:
        """The first check conversation these pieces render differently from the template, described; None if all agree."""
        for conversation in CHECK_CONVERSATIONS:
            expected = tokenizer.apply_chat_template(conversation, chat_template=template, tokenize=False, add_generation_prompt=True)
            actual = self.render(conversation)
            if actual != expected:
                roles = "/".join(message["role"] for message in conversation)
                return f"a {roles} conversation renders as {actual!r} instead of {expected!r}"
        return None

    @property
    def end_of_turn(self) -> str:
        """The text that ends an assistant answer: what generation must stop at."""
        return self.suffixes["assistant"]

    def to_ollama_template(self) -> str:
        """A Go template over Ollama's ``.Messages`` that renders exactly what ``render`` does.

        It is one line of actions with no ``{{-`` trimming, so the newlines inside the pieces survive."""
        def text(piece: str) -> str:
            return piece if "{{" not in piece and "}}" not in piece else "{{ " + json.dumps(piece, ensure_ascii=False) + " }}"

        def by_role(pieces: dict[str, str]) -> str:
            branches = [f'{{{{ if eq $m.Role "{role}" }}}}{text(pieces[role])}' if i == 0 else
                        f'{{{{ else if eq $m.Role "{role}" }}}}{text(pieces[role])}' for i, role in enumerate(ROLES)]
            return "".join(branches) + "{{ end }}"

        first = (f'{{{{ if eq $m.Role "system" }}}}{text(self.head_with_system)}'
                 f'{{{{ else }}}}{text(self.head_without_system)}{by_role(self.prefixes)}{{{{ end }}}}')
        return ("{{ range $i, $m := .Messages }}"
                f"{{{{ if eq $i 0 }}}}{first}{{{{ else }}}}{by_role(self.prefixes)}{{{{ end }}}}"
                f"{{{{ $m.Content }}}}{by_role(self.suffixes)}"
                '{{ if and (eq (len (slice $.Messages $i)) 1) (ne $m.Role "assistant") }}'
                f"{text(self.generation_prompt)}{{{{ end }}}}"
                "{{ end }}")


def _common_prefix(a: str, b: str) -> str:
    length = 0
    while length < min(len(a), len(b)) and a[length] == b[length]:
        length += 1
    return a[:length]
