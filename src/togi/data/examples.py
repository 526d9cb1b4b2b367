"""The canonical in-memory forms of examples (DESIGN.md: one per kind).

Every input format converts into one of these at the edge (``formats.py``); nothing deeper looks at
raw rows. Each example remembers where it came from so later findings can name the line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

from togi.data.findings import Finding


class ExampleKind(str, Enum):
    CHAT = "chat"
    PREFERENCE = "preference"
    KTO = "kto"
    CLASSIFICATION = "classification"


@dataclass(frozen=True)
class Source:
    file: str
    line: int  # 1-based
    index: int  # 0-based position among the file's records


@dataclass
class Message:
    role: str
    content: str
    # Only assistant messages carry a weight: 0 = shown to the model but not trained on.
    weight: int | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    @property
    def trained(self) -> bool:
        return self.role == "assistant" and self.weight != 0

    def to_template_dict(self) -> dict[str, Any]:
        """The message as chat templates expect it (no togi-only keys such as ``weight``)."""
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        for key in ("name", "tool_calls", "tool_call_id"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data

    def to_openai_dict(self) -> dict[str, Any]:
        data = self.to_template_dict()
        if self.weight is not None:
            data["weight"] = self.weight
        return data


def system_prompt_of(messages: list[Message]) -> str | None:
    return messages[0].content if messages and messages[0].role == "system" else None


def join_contents(messages: list[Message]) -> str:
    return "\n".join(message.content for message in messages)


@dataclass
class ChatExample:
    messages: list[Message]
    source: Source
    tools: list[dict[str, Any]] | None = None
    parallel_tool_calls: bool | None = None

    kind = ExampleKind.CHAT

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the last assistant message: what the final answer responds to."""
        last = max((i for i, m in enumerate(self.messages) if m.role == "assistant"), default=len(self.messages))
        return self.messages[:last]

    @property
    def final_answer(self) -> str:
        answers = [m.content for m in self.messages if m.role == "assistant"]
        return answers[-1] if answers else ""

    @property
    def input_text(self) -> str:
        return join_contents([m for m in self.messages if m.role in ("user", "tool", "function")])

    @property
    def output_text(self) -> str:
        return join_contents([m for m in self.messages if m.trained])

    @property
    def system_prompt(self) -> str | None:
        return system_prompt_of(self.messages)


@dataclass
class PreferenceExample:
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]
    source: Source
    tools: list[dict[str, Any]] | None = None

    kind = ExampleKind.PREFERENCE

    @property
    def prompt_messages(self) -> list[Message]:
        return self.prompt

    @property
    def final_answer(self) -> str:
        return join_contents(self.chosen)

    @property
    def input_text(self) -> str:
        return join_contents([m for m in self.prompt if m.role != "system"])

    @property
    def output_text(self) -> str:
        return join_contents(self.chosen)

    @property
    def system_prompt(self) -> str | None:
        return system_prompt_of(self.prompt)


@dataclass
class KTOExample:
    """An unpaired preference: a conversation whose final answer is labelled desirable or not."""

    messages: list[Message]
    label: bool
    source: Source

    kind = ExampleKind.KTO

    @property
    def prompt_messages(self) -> list[Message]:
        return [m for m in self.messages if m.role != "assistant"]

    @property
    def final_answer(self) -> str:
        return join_contents([m for m in self.messages if m.role == "assistant"])

    @property
    def input_text(self) -> str:
        return join_contents([m for m in self.messages if m.role in ("user", "tool")])

    @property
    def output_text(self) -> str:
        return self.final_answer

    @property
    def system_prompt(self) -> str | None:
        return system_prompt_of(self.messages)


@dataclass
class ClassificationExample:
    text: str
    label: str
    source: Source

    kind = ExampleKind.CLASSIFICATION

    @property
    def prompt_messages(self) -> list[Message]:
        return [Message(role="user", content=self.text)]

    @property
    def final_answer(self) -> str:
        return self.label

    @property
    def input_text(self) -> str:
        return self.text

    @property
    def output_text(self) -> str:
        return self.label

    @property
    def system_prompt(self) -> str | None:
        return None


Example = Union[ChatExample, PreferenceExample, KTOExample, ClassificationExample]


@dataclass
class Prompt:
    """A conversation for a model to answer (it ends with a user message), e.g. to generate preference pairs from."""

    messages: list[Message]
    source: Source

    @property
    def key(self) -> str:
        """A hash of the conversation's content: the same prompt has the same key in any file, at any line."""
        text = json.dumps([message.to_template_dict() for message in self.messages], ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Dataset:
    """A file's examples in canonical form, with the findings met while reading and converting them.

    Only valid examples are kept; every dropped record has at least one error finding.
    """

    path: str
    format: str
    kind: ExampleKind
    examples: list[Example] = field(default_factory=list)
    # The raw record each example came from, by record index: `split` writes records back unchanged.
    raw_records: list[Any] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    container: str = "jsonl"
    csv_header: list[str] | None = None
