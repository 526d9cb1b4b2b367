"""Statistics of a data set: sizes in characters and real tokens, trained vs prompt tokens, roles,
labels, and the training volume and cost.

Token counts come from the model's own tokenizer and chat template (``template.py``), exactly as the
trainer will see them. Characters are counted as Unicode code points, never bytes, so a Japanese
sentence of 20 characters counts 20, not 60.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from togi.data.examples import Dataset, Example
from togi.data.findings import Finding, Severity
from togi.data.labels import label_of
from togi.data.template import RenderedText, TokenizedChat, render_examples, tokenize_rendered

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_MAX_LENGTH = 2048
DEFAULT_EPOCHS = 3
DEFAULT_PRICE_PER_MILLION = 3.00  # USD per 1M training tokens (gpt-4o-mini fine-tuning, seed 003)
_BATCH_SIZE = 1000  # examples tokenized per call: fast, and bounded in memory


@dataclass(frozen=True)
class Summary:
    min: float
    mean: float
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: list[int]) -> Summary | None:
        if not values:
            return None
        array = np.asarray(values, dtype=np.float64)
        return cls(min=float(array.min()), mean=round(float(array.mean()), 1), p50=round(float(np.percentile(array, 50)), 1),
                   p95=round(float(np.percentile(array, 95)), 1), max=float(array.max()))


@dataclass(frozen=True)
class ExampleTokens:
    line: int
    index: int
    tokens: int  # the longest sequence of the example, before truncation
    trained: int  # trained tokens over all its sequences, after truncation
    billed: int  # tokens over all its sequences, after truncation


@dataclass
class DatasetStats:
    n_examples: int
    characters: Summary | None
    role_counts: dict[str, int]
    label_counts: dict[str, int] | None
    tokenizer: str | None = None
    tokens: Summary | None = None
    max_length: int = DEFAULT_MAX_LENGTH
    n_over_max_length: int = 0
    trained_tokens: int = 0
    prompt_tokens: int = 0
    epochs: int = DEFAULT_EPOCHS
    price_per_million: float = DEFAULT_PRICE_PER_MILLION
    tokens_per_epoch: int = 0
    per_example: list[ExampleTokens] = field(default_factory=list, repr=False)

    @property
    def training_tokens(self) -> int:
        return self.tokens_per_epoch * self.epochs

    @property
    def estimated_cost(self) -> float:
        return self.training_tokens / 1_000_000 * self.price_per_million

    def to_dict(self) -> dict[str, Any]:
        # Field by field: asdict would first copy every example's record only to drop them (seconds for 100k).
        data = {item.name: _plain(getattr(self, item.name)) for item in fields(self) if item.name != "per_example"}
        data["training_tokens"] = self.training_tokens
        data["estimated_cost"] = round(self.estimated_cost, 4)
        return data


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) else value


def character_count(example: Example) -> int:
    """Code points of everything the example says (input and output), system prompt excluded."""
    return len(example.input_text) + len(example.output_text)


def compute_stats(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    tokenizer_name: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    epochs: int = DEFAULT_EPOCHS,
    price_per_million: float = DEFAULT_PRICE_PER_MILLION,
    label_pattern: re.Pattern[str] | None = None,
    findings: list[Finding] | None = None,
) -> DatasetStats:
    """Statistics of the valid examples. Examples the chat template cannot render are reported into
    ``findings`` (code ``template_error``) and left out of the token figures."""
    examples = dataset.examples
    roles: Counter[str] = Counter()
    for example in examples:
        for name in ("messages", "prompt", "chosen", "rejected"):
            roles.update(message.role for message in getattr(example, name, []))
    labels = [label_of(example, label_pattern) for example in examples]
    label_counts = dict(Counter(label for label in labels if label is not None).most_common()) or None
    stats = DatasetStats(
        n_examples=len(examples),
        characters=Summary.of([character_count(example) for example in examples]),
        role_counts=dict(roles.most_common()),
        label_counts=label_counts,
        max_length=max_length,
        epochs=epochs,
        price_per_million=price_per_million,
    )
    if tokenizer is None:
        return stats
    stats.tokenizer = tokenizer_name or getattr(tokenizer, "name_or_path", None)
    stats.per_example = _token_counts(dataset, tokenizer, max_length, findings)
    per_example = stats.per_example
    stats.tokens = Summary.of([record.tokens for record in per_example])
    stats.n_over_max_length = sum(record.tokens > max_length for record in per_example)
    stats.trained_tokens = sum(record.trained for record in per_example)
    stats.tokens_per_epoch = sum(record.billed for record in per_example)
    stats.prompt_tokens = stats.tokens_per_epoch - stats.trained_tokens
    return stats


def _token_counts(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, findings: list[Finding] | None) -> list[ExampleTokens]:
    """Each example's token figures, a batch of examples per tokenizer call; examples the chat template
    refuses are reported into ``findings``."""
    counts = []
    for first in range(0, len(dataset.examples), _BATCH_SIZE):
        batch = dataset.examples[first : first + _BATCH_SIZE]
        rendered: list[tuple[Example, list[RenderedText]]] = []
        for example, texts in zip(batch, render_examples(tokenizer, batch)):
            if isinstance(texts, Exception):
                if findings is not None:
                    findings.append(_template_finding(dataset.path, example, texts))
            else:
                rendered.append((example, texts))
        sequences = iter(tokenize_rendered(tokenizer, [text for _, texts in rendered for text in texts], max_length=max_length))
        counts += [_example_tokens(example, [next(sequences) for _ in texts]) for example, texts in rendered]
    return counts


def _example_tokens(example: Example, sequences: list[TokenizedChat]) -> ExampleTokens:
    return ExampleTokens(
        line=example.source.line,
        index=example.source.index,
        tokens=max(sequence.length_before_truncation for sequence in sequences),
        trained=sum(sequence.n_trained for sequence in sequences),
        billed=sum(sequence.n_tokens for sequence in sequences),
    )


def _template_finding(file: str, example: Example, error: Exception) -> Finding:
    return Finding(
        code="template_error",
        severity=Severity.ERROR,
        message=f"the model's chat template cannot render this example: {error}",
        hint="reorder the messages as the model expects (many templates require user/assistant alternation), or choose another model",
        file=file,
        line=example.source.line,
        example=example.source.index,
    )
