"""``togi eval adapters FOLDER --test NAME=FILE ...``: every adapter of a multi-adapter export (and the base) on
every task's test file, so that a combination (``--combine``) is judged against the adapter of each task.

The base and the adapters are loaded once, into one PEFT model; each model answers each test file greedily
(``score_model``, as ``togi eval`` does) with its adapter set, the base with the adapters off. The table is
written to ``FOLDER/eval/adapters.json``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from togi.data.examples import ChatExample
from togi.data.formats import load_dataset
from togi.data.labels import compile_label_pattern
from togi.data.writer import atomic_write_text
from togi.evaluate import metrics
from togi.evaluate.runner import EvalOptions, EvaluationError, score_model
from togi.models.adapter_folder import is_adapter_folder, read_manifest
from togi.models.resolve import load_tokenizer

BASE = "base"


@dataclass
class AdapterScores:
    task: str  # the test file's name on the command line
    data: str
    model: str  # "base", or an adapter's name
    metrics: dict[str, float]


def evaluate_adapters(folder: Path, tests: dict[str, Path], options: EvalOptions) -> list[AdapterScores]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if not is_adapter_folder(folder):
        raise EvaluationError(f"{folder} is not a multi-adapter export (no adapters.json)",
                              "make one with togi export A=RUN B=RUN --to multi-adapter --out FOLDER")
    manifest = read_manifest(folder)
    names = list(manifest["adapters"])
    examples = {task: _examples(path, options.limit) for task, path in tests.items()}
    extractor = None
    if options.label_pattern:
        extractor = metrics.LabelExtractor(pattern=compile_label_pattern(options.label_pattern), labels=options.labels)
    tokenizer = load_tokenizer(str(folder / manifest["base"]))
    base = AutoModelForCausalLM.from_pretrained(str(folder / manifest["base"]), dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, str(folder / manifest["adapters"][names[0]]["path"]), adapter_name=names[0]).eval()
    for name in names[1:]:
        model.load_adapter(str(folder / manifest["adapters"][name]["path"]), adapter_name=name)
    rows = []
    for model_name in [BASE, *names]:
        with _active(model, model_name):
            for task, task_examples in examples.items():
                torch.manual_seed(0)
                scores = score_model(model_name, model, tokenizer, task_examples, options, extractor)
                rows.append(AdapterScores(task, str(tests[task]), model_name, scores.metrics))
    return rows


@contextlib.contextmanager
def _active(model: Any, name: str):
    if name == BASE:
        with model.disable_adapter():
            yield
    else:
        model.set_adapter(name)
        yield


def _examples(path: Path, limit: int | None) -> list[ChatExample]:
    examples = [example for example in load_dataset(path).examples if isinstance(example, ChatExample)][:limit]
    if not examples:
        raise EvaluationError(f"{path} holds no valid chat examples; run `togi data check {path}`",
                              "a test file is chat data whose last assistant message is the reference answer")
    return examples


def write_adapter_scores(rows: list[AdapterScores], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "adapters.json"
    atomic_write_text(path, json.dumps([row.__dict__ for row in rows], ensure_ascii=False, indent=2) + "\n")
    return path
