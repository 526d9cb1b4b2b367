"""Classifying texts with a run of ``task: classification``: the library side of ``togi predict``.

The run directory keeps the trained model (``model/``: full or head-only training, its config naming the
labels) or a LoRA adapter with the trained head (``adapter/``, the labels in run.json), each with its
tokenizer. Texts are truncated as in training and batched by length; each gets a probability per label.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from togi.errors import TogiError
from togi.runs import Run


class NotAClassifierRun(TogiError):
    """The directory is not a finished run of ``task: classification``."""


@dataclass(frozen=True)
class Prediction:
    text: str
    scores: list[tuple[str, float]]  # (label, probability), the most probable first

    @property
    def label(self) -> str:
        return self.scores[0][0]

    @property
    def probability(self) -> float:
        return self.scores[0][1]

    def to_dict(self, top_k: int = 1) -> dict[str, Any]:
        return {"text": self.text, "label": self.label, "probability": round(self.probability, 6),
                "top": [{"label": label, "probability": round(probability, 6)} for label, probability in self.scores[:top_k]]}


class TextClassifier:
    def __init__(self, model: Any, tokenizer: Any, max_length: int, device: Any) -> None:
        self.model, self.tokenizer, self.max_length, self.device = model, tokenizer, max_length, device
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    def predict(self, texts: list[str], batch_size: int = 16) -> list[Prediction]:
        by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of like lengths pad little
        predictions: dict[int, Prediction] = {}
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                indices = by_length[start : start + batch_size]
                batch = self.tokenizer([texts[i] for i in indices], truncation=True, max_length=self.max_length, padding=True,
                                       return_tensors="pt").to(self.device)
                probabilities = torch.softmax(self.model(**batch).logits.float(), dim=-1).tolist()
                for index, row in zip(indices, probabilities):
                    ranked = sorted(zip(self.labels, row), key=lambda pair: -pair[1])
                    predictions[index] = Prediction(text=texts[index], scores=ranked)
        return [predictions[i] for i in range(len(texts))]


def load_classification_run(run_dir: Path | str) -> TextClassifier:
    """The classifier a run trained. Raises NotAClassifierRun for a run that is not a classification run, and
    ``togi.runs.RunDirectoryError`` for a directory that is no run or holds no trained model yet."""
    run = Run.open(run_dir)
    info = run.info
    if info.get("task") != "classification":
        raise NotAClassifierRun(f"{run.path} is a {info.get('stage', 'sft')} run of a chat model, not a classification run",
                                "train a classifier with task: classification (examples/recipes/reviews-classification.yaml); "
                                f"chat with this one: togi chat {run.path}")
    model, tokenizer = run.load_trained_model()
    max_length = min(run.config.data.max_length, getattr(model.config, "max_position_embeddings", None) or run.config.data.max_length)
    return TextClassifier(model, tokenizer, max_length, model.device)
