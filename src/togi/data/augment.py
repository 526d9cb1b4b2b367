"""Data augmentation (seed 000): new inputs for the same answers, written by a chat model.

- Paraphrase: the model rewrites each example's input (the last user message, or a classification text)
  n ways, asked for a JSON array of strings.
- Back-translation: the input is translated into a pivot language and back (``ja:en``: Japanese to
  English to Japanese); two requests per example.

The answer is never touched: augmenting means new ways to ask for the same output. Every generated
input is checked before it is kept: not empty, not the source unchanged, not a duplicate of any input
in the file or generated before (after NFKC/case/space/punctuation normalisation), of a sensible length,
in the source's script, not the answer copied, and not showing a label the source does not. The model
is any ``complete(messages) -> str``: this module knows nothing of models or endpoints.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from togi.data.examples import ChatExample, ClassificationExample, Dataset, Example, ExampleKind
from togi.data.json_reply import first_json
from togi.data.quality import normalize_text
from togi.data.writer import atomic_write_bytes, example_to_record
from togi.errors import TogiError

LANGUAGES = {"ja": "Japanese", "en": "English", "zh": "Chinese", "ko": "Korean", "fr": "French", "de": "German", "es": "Spanish",
             "it": "Italian", "pt": "Portuguese", "ru": "Russian", "vi": "Vietnamese", "th": "Thai", "id": "Indonesian"}
_SCRIPT_OF_LANGUAGE = {"ja": "cjk", "zh": "cjk", "ko": "hangul", "ru": "cyrillic", "th": "thai"}  # the others: latin
REJECT_REASONS = {
    "unreadable_reply": "the reply held no paraphrases (each such reply counts as one candidate)",
    "empty": "empty",
    "unchanged": "the same as its source",
    "duplicate": "the same as an input in the file or generated before",
    "too_long": "over 3 times the source's length",
    "too_short": "under a third of the source's length",
    "wrong_script": "not in the script of the source's language",
    "pivot_wrong_script": "the translation into the pivot language was not in its script",
    "answer_copied": "holds the answer instead of rephrasing the input",
    "label_leak": "matches --label-pattern where the source does not",
}
Complete = Callable[[list[dict[str, str]]], str]


class AugmentError(TogiError, ValueError):
    """Options or data that augmentation cannot work with."""

    hint = "see `togi data augment --help`"


@dataclass(frozen=True)
class AugmentOptions:
    paraphrases: int = 0
    back_translate: tuple[str, str] | None = None  # (the data's language, the pivot language)
    label_pattern: re.Pattern[str] | None = None


@dataclass
class AugmentResult:
    records: list[dict[str, Any]] = field(default_factory=list)  # the kept synthetic examples, in the file's format
    generated: int = 0
    rejected: Counter[str] = field(default_factory=Counter)


def parse_language_pair(value: str) -> tuple[str, str]:
    """``"ja:en"`` -> ("ja", "en")."""
    source, _, pivot = value.strip().lower().partition(":")
    if not source or not pivot or source == pivot:
        raise AugmentError(f"--back-translate {value!r} is not SOURCE:PIVOT, e.g. ja:en (Japanese to English and back)",
                           "two different language codes joined by a colon")
    return source, pivot


def _script_counts(text: str) -> Counter[str]:
    """Letters per writing system: cjk (kanji and kana), latin, hangul, cyrillic, thai, ..."""
    counts: Counter[str] = Counter()
    for char in unicodedata.normalize("NFKC", text):
        if char.isalpha():
            name = unicodedata.name(char, "")
            counts["cjk" if name.startswith(("CJK", "HIRAGANA", "KATAKANA")) else name.split(" ")[0].lower()] += 1
    return counts


def script_of(text: str) -> str | None:
    """The writing system most of the letters are in; None without letters."""
    counts = _script_counts(text)
    return counts.most_common(1)[0][0] if counts else None


def same_script(candidate: str, source: str) -> bool:
    """Each text's main script appears in the other: "iPhoneの在庫" and "iPhoneはありますか" match, Japanese and English do not."""
    have, want = _script_counts(candidate), _script_counts(source)
    if not want:
        return True
    return bool(have) and want.most_common(1)[0][0] in have and have.most_common(1)[0][0] in want


def paraphrase_messages(text: str, count: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You rewrite text. Keep its meaning, its language and every fact (names, numbers); vary the wording."},
            {"role": "user", "content": f"Write {count} different paraphrases of the text below, in the same language as the text. "
                                        f"Reply with a JSON array of {count} strings only.\n\nText:\n{text}"}]


def translation_messages(text: str, source: str, target: str) -> list[dict[str, str]]:
    names = [LANGUAGES.get(code, code) for code in (source, target)]
    return [{"role": "system", "content": "You are a translator. Translate faithfully, keeping names and numbers. Reply with the translation only."},
            {"role": "user", "content": f"Translate this text from {names[0]} into {names[1]}:\n\n{text}"}]


def parse_paraphrases(reply: str) -> list[str]:
    """The strings of the first JSON array in the reply; else its numbered or bulleted lines."""
    value = first_json(reply, "[")
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return [match.group(1) for match in re.finditer(r"^\s*(?:\d+[.)]|[-*•])\s+(.+)$", reply, re.MULTILINE)]


def clean_translation(reply: str) -> str:
    """The translation without the code fence or quotes a model may wrap it in."""
    text = re.sub(r"^```\w*\n?|\n?```$", "", reply.strip()).strip()
    if len(text) >= 2 and (text[0], text[-1]) in (('"', '"'), ("「", "」"), ("“", "”")):
        text = text[1:-1].strip()
    return text


def rejection(candidate: str, source: str, answer: str, seen: set[str], label_pattern: re.Pattern[str] | None = None) -> str | None:
    """Why a generated input is not kept (a key of REJECT_REASONS), or None. ``seen`` holds the normalised inputs so far."""
    text, key = candidate.strip(), normalize_text(candidate)
    if not key:
        return "empty"
    if key == normalize_text(source):
        return "unchanged"
    if key in seen:
        return "duplicate"
    if len(text) > 3 * len(source.strip()) + 20:
        return "too_long"
    if 3 * len(text) < len(source.strip()):
        return "too_short"
    if not same_script(text, source):
        return "wrong_script"
    answer_key = normalize_text(answer)
    if len(answer_key) >= 10 and answer_key in key:
        return "answer_copied"
    if label_pattern is not None and label_pattern.search(text) and not label_pattern.search(source):
        return "label_leak"
    return None


def input_of(example: Example) -> str:
    """The text augmentation rewrites: the last user message a chat example's answer replies to, or a classification text."""
    if isinstance(example, ClassificationExample):
        return example.text
    assert isinstance(example, ChatExample)
    return next(message.content for message in reversed(example.prompt_messages) if message.role == "user")


def with_input(example: Example, text: str) -> Example:
    if isinstance(example, ClassificationExample):
        return replace(example, text=text)
    assert isinstance(example, ChatExample)
    position = max(i for i, message in enumerate(example.prompt_messages) if message.role == "user")
    messages = list(example.messages)
    messages[position] = replace(messages[position], content=text)
    return replace(example, messages=messages)


def _candidates(source: str, complete: Complete, options: AugmentOptions, result: AugmentResult) -> list[tuple[str, dict[str, str]]]:
    """(generated input, how it was made) for one source text; replies that hold none are counted as rejected."""
    candidates = []
    if options.paraphrases:
        texts = parse_paraphrases(complete(paraphrase_messages(source, options.paraphrases)))[: options.paraphrases]
        if not texts:
            result.generated += 1
            result.rejected["unreadable_reply"] += 1
        candidates += [(text, {"synthetic": "paraphrase"}) for text in texts]
    if options.back_translate:
        language, pivot = options.back_translate
        pivot_text = clean_translation(complete(translation_messages(source, language, pivot)))
        if pivot in LANGUAGES and script_of(pivot_text) != _SCRIPT_OF_LANGUAGE.get(pivot, "latin"):
            result.generated += 1
            result.rejected["pivot_wrong_script"] += 1
        else:
            back = clean_translation(complete(translation_messages(pivot_text, pivot, language)))
            candidates.append((back, {"synthetic": "back_translation", "pivot": pivot}))
    return candidates


def require_augmentable(dataset: Dataset) -> None:
    if dataset.kind not in (ExampleKind.CHAT, ExampleKind.CLASSIFICATION):
        raise AugmentError(f"{dataset.path} holds {dataset.kind.value} examples; augmentation rewrites the inputs of chat or classification data",
                           "pass a chat or classification data file")


def augment_dataset(dataset: Dataset, complete: Complete, options: AugmentOptions,
                    progress: Callable[[int], None] = lambda done: None) -> AugmentResult:
    """New examples for a chat or classification data set, checked and deduplicated; the originals are not in the result."""
    require_augmentable(dataset)
    seen = {normalize_text(input_of(example)) for example in dataset.examples}
    result = AugmentResult()
    for done, example in enumerate(dataset.examples, start=1):
        source = input_of(example)
        for text, how in _candidates(source, complete, options, result):
            result.generated += 1
            reason = rejection(text, source, example.final_answer, seen, options.label_pattern)
            if reason is not None:
                result.rejected[reason] += 1
                continue
            seen.add(normalize_text(text))
            record = example_to_record(with_input(example, text.strip()), dataset.format, dataset.container)
            record["togi"] = {**how, "source_line": example.source.line}
            result.records.append(record)
        progress(done)
    return result


def write_augmented(source: Path, target: Path, records: list[dict[str, Any]], encoding: str = "utf-8") -> None:
    """``target``: the bytes of ``source`` unchanged, then one line per synthetic record; written atomically."""
    original = source.read_bytes()
    if original and not original.endswith(b"\n"):
        original += b"\n"
    added = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    atomic_write_bytes(target, original + added.encode(encoding))
