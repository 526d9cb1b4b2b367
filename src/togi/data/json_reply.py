"""Reading JSON out of what a language model wrote: the first balanced ``{...}`` or ``[...]`` that parses,
with code fences, chatter, trailing commas and a reply cut off just before its closing bracket allowed.
Judges and data generators ask for JSON; models answer with JSON and more.
"""

from __future__ import annotations

import json
import re
from typing import Any

_CLOSING = {"{": "}", "[": "]"}


def _balanced_from(text: str, start: int) -> str | None:
    """The bracketed text starting at ``start``, up to its matching closing bracket (strings respected)."""
    opener = text[start]
    depth, in_string, escaped = 0, False, False
    for position in range(start, len(text)):
        char = text[position]
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == opener:
            depth += 1
        elif char == _CLOSING[opener]:
            depth -= 1
            if depth == 0:
                return text[start : position + 1]
    return None


def first_json(text: str, opener: str = "{") -> Any:
    """The first ``{...}`` (``opener="{"``) or ``[...]`` (``opener="["``) in the text that parses as JSON, else None."""
    closer = _CLOSING[opener]
    for attempt in (text, text + closer):  # the second: a reply cut off by max_tokens just before its closing bracket
        for match in re.finditer(re.escape(opener), attempt):
            candidate = _balanced_from(attempt, match.start())
            if candidate is None:
                continue
            try:
                return json.loads(re.sub(r",\s*([}\]])", r"\1", candidate))  # trailing commas
            except json.JSONDecodeError:
                continue
        if opener not in text or closer in text[text.index(opener):]:
            break
    return None
