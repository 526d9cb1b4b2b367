"""``togi eval``: answer a test set with the tuned model and a baseline, under the same greedy decoding,
and score both with the same metrics. Every aggregate is traceable to per-example records.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from togi.data.examples import ChatExample
from togi.data.formats import load_dataset
from togi.data.labels import compile_label_pattern
from togi.data.template import render_chat, tokenize_chat
from togi.data.writer import atomic_write_text
from togi.errors import TogiError
from togi.evaluate import metrics
from togi.evaluate.html_report import render_html
from togi.evaluate.judge import judge_pairs
from togi.models.generation import answer_budget, generate_answers
from togi.runs import Run


class EvaluationError(TogiError):
    """The run or the test data cannot be evaluated."""


@dataclass(frozen=True)
class EvalOptions:
    data: Path
    baseline: str = "base"  # "base", or another run directory
    batch_size: int = 8
    max_new_tokens: int | None = None  # default: 1.5x the longest reference
    limit: int | None = None
    label_pattern: str | None = None
    labels: tuple[str, ...] = ()
    judge: Any = None  # a togi.models.chat_client.ChatClient, or None for no judge
    judge_name: str = ""


@dataclass
class ModelScores:
    name: str
    metrics: dict[str, float]
    latency_seconds: float  # mean wall time until an answer came back (prompts are answered in batches)
    tokens_per_second: float
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)


@dataclass
class EvalReport:
    run_dir: str
    data: str
    n_examples: int
    tuned: ModelScores
    baseline: ModelScores
    bleu_tokenizer: str
    judge: dict[str, Any] | None = None  # the judge's summary: wins, ties, losses, win rate with its 95% interval
    judgements: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def deltas(self) -> dict[str, float]:
        return {name: self.tuned.metrics[name] - self.baseline.metrics[name] for name in self.tuned.metrics if name in self.baseline.metrics}

    def summary(self) -> str:
        """In words, what tuning changed: the label accuracy (or else ROUGE-L) of the baseline and the tuned
        model, and how many tuned answers ended on their own rather than at the length limit."""
        metric = next((name for name in ("accuracy", "rougeL") if name in self.tuned.metrics), None)
        finished = sum(not record.get("hit_limit", False) for record in self.tuned.records)
        words = f"{finished} of {self.n_examples} tuned answers ended before the length limit"
        if metric is None:
            return words
        label = "label accuracy" if metric == "accuracy" else "ROUGE-L"
        return (f"{label} {self.baseline.metrics.get(metric, 0.0):.2f} ({self.baseline.name}) → {self.tuned.metrics[metric]:.2f} (tuned) "
                f"on {self.n_examples} held-out examples; {words}")

    def to_dict(self) -> dict[str, Any]:
        def scores(side: ModelScores) -> dict[str, Any]:
            return {"name": side.name, "metrics": side.metrics, "latency_seconds": side.latency_seconds, "tokens_per_second": side.tokens_per_second}

        return {"run_dir": self.run_dir, "data": self.data, "n_examples": self.n_examples, "bleu_tokenizer": self.bleu_tokenizer,
                "tuned": scores(self.tuned), "baseline": scores(self.baseline), "deltas": self.deltas(),
                "higher_is_better": {name: metrics.HIGHER_IS_BETTER[name] for name in self.tuned.metrics}, "judge": self.judge}


def _run_model(run_dir: Path) -> tuple[Any, Any, bool, Any]:
    """(model, tokenizer, is_adapter, base loader) of a training run directory; an adapter is not merged, so
    that the base model is the same weights with the adapter off."""
    run = Run.open(run_dir)
    model, tokenizer = run.load_trained_model()
    return model, tokenizer, run.config.traits.adapter, run.load_base_model


def _is_lora(model: Any) -> bool:
    config = getattr(model, "peft_config", {}).get("default")
    return getattr(config, "peft_type", None) is not None and str(config.peft_type.value) == "LORA"


def _answer_loss(model: Any, tokenizer: Any, example: ChatExample) -> tuple[float, int]:
    """Summed negative log-likelihood of the reference answer's tokens, and their count."""
    sequence = tokenize_chat(tokenizer, example.messages, example.tools)
    labels = [token if trained else -100 for token, trained in zip(sequence.input_ids, sequence.trained)]
    with torch.no_grad():
        output = model(input_ids=torch.tensor([sequence.input_ids], device=model.device),
                       labels=torch.tensor([labels], device=model.device), use_cache=False)
    count = sum(label != -100 for label in labels[1:])
    return float(output.loss) * count, count


def score_model(name: str, model: Any, tokenizer: Any, examples: list[ChatExample], options: EvalOptions,
                extractor: metrics.LabelExtractor | None) -> ModelScores:
    prompts = [render_chat(tokenizer, example.prompt_messages, example.tools, add_generation_prompt=True) for example in examples]
    references = [example.final_answer for example in examples]
    budget = options.max_new_tokens or answer_budget(tokenizer, references)
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=budget, batch_size=options.batch_size)
    predictions = [answer.text for answer in answers]
    records = []
    total_loss, total_tokens = 0.0, 0
    for example, answer, reference in zip(examples, answers, references):
        loss, count = _answer_loss(model, tokenizer, example)
        total_loss, total_tokens = total_loss + loss, total_tokens + count
        record = {"index": example.source.index, "line": example.source.line, "input": example.prompt_messages[-1].content,
                  "reference": reference, "prediction": answer.text, "exact_match": metrics.exact_match(answer.text, reference),
                  "rougeL": round(metrics.rouge_l(answer.text, reference), 6), "answer_loss": round(loss / max(count, 1), 6),
                  "latency_seconds": round(answer.seconds, 4), "new_tokens": answer.new_tokens, "hit_limit": answer.new_tokens >= budget}
        if extractor is not None:
            record.update(expected_label=extractor(reference), predicted_label=extractor(answer.text))
        records.append(record)
    scores = {
        "exact_match": sum(r["exact_match"] for r in records) / len(records),
        "rougeL": sum(r["rougeL"] for r in records) / len(records),
        "bleu": metrics.corpus_bleu(predictions, references),
        "chrf": metrics.corpus_chrf(predictions, references),
        "mean_token_loss": total_loss / max(total_tokens, 1),
    }
    scores["perplexity"] = math.exp(min(scores["mean_token_loss"], 50.0))
    if extractor is not None:
        scored = [r for r in records if r["expected_label"] is not None]
        if scored:
            scores["accuracy"], scores["macro_f1"] = metrics.accuracy_and_macro_f1(
                [r["predicted_label"] for r in scored], [r["expected_label"] for r in scored])
    generation_seconds = sum(answers[i].seconds for i in range(0, len(answers), options.batch_size))  # one time per batch
    return ModelScores(name=name, metrics={key: round(value, 6) for key, value in scores.items()},
                       latency_seconds=round(sum(r["latency_seconds"] for r in records) / len(records), 4),
                       tokens_per_second=round(sum(a.new_tokens for a in answers) / generation_seconds, 2) if generation_seconds else 0.0,
                       records=records)


def evaluate_run(run_dir: Path | str, options: EvalOptions) -> EvalReport:
    run_dir = Path(run_dir)
    dataset = load_dataset(options.data)
    examples = [example for example in dataset.examples if isinstance(example, ChatExample)][: options.limit]
    if not examples:
        raise EvaluationError(f"{options.data} holds no valid chat examples; run `togi data check {options.data}`",
                              "the test set is chat data whose last assistant message is the reference answer")
    extractor = None
    if options.label_pattern or options.labels:
        extractor = metrics.LabelExtractor(pattern=compile_label_pattern(options.label_pattern), labels=options.labels)
    torch.manual_seed(0)
    model, tokenizer, is_adapter, load_base = _run_model(run_dir)
    with _baseline(options.baseline, model, is_adapter, load_base) as (baseline_model, baseline_name):
        baseline = score_model(baseline_name, baseline_model, tokenizer, examples, options, extractor)
    if is_adapter and _is_lora(model):
        model.merge_adapter()  # LoRA folded into the weights: the same answers, generated about 1.5x faster
    tuned = score_model("tuned", model, tokenizer, examples, options, extractor)
    report = EvalReport(run_dir=str(run_dir), data=str(options.data), n_examples=len(examples), tuned=tuned, baseline=baseline,
                        bleu_tokenizer=metrics.bleu_tokenizer([example.final_answer for example in examples]))
    if options.judge is not None:
        items = [{"question": t["input"], "reference": t["reference"], "tuned": t["prediction"], "baseline": b["prediction"]}
                 for t, b in zip(tuned.records, baseline.records)]
        report.judgements, summary = judge_pairs(options.judge, items)
        report.judge = {"judge": options.judge_name, **summary.to_dict()}
    return report


@contextlib.contextmanager
def _baseline(baseline: str, model: Any, is_adapter: bool, load_base: Any) -> Iterator[tuple[Any, str]]:
    if baseline == "base":
        if is_adapter:
            with model.disable_adapter():  # the same weights with the adapter off: no second copy in memory
                yield model, "base"
        else:
            yield load_base(), "base"
        return
    other, _, _, _ = _run_model(Path(baseline))
    yield other, Path(baseline).name


def write_report(report: EvalReport, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "report.json", json.dumps(report.to_dict(), ensure_ascii=False, indent=2) + "\n")
    records = [{"model": side.name, **record} for side in (report.tuned, report.baseline) for record in side.records]
    atomic_write_text(out_dir / "records.jsonl", "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    if report.judgements:
        lines = [{"index": record["index"], **judgement} for record, judgement in zip(report.tuned.records, report.judgements)]
        atomic_write_text(out_dir / "judgements.jsonl", "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    page = render_html(report.to_dict(), report.tuned.records, report.baseline.records, loss_plot=Run(Path(report.run_dir)).plot_path)
    atomic_write_text(out_dir / "report.html", page)
    return out_dir / "report.json"


def gate_failures(report: EvalReport, fail_below: dict[str, float], must_beat_baseline: bool) -> list[str]:
    """Messages for each gate a report fails: a metric under its floor, or worse than the baseline."""
    failures = []
    for name, floor in fail_below.items():
        value = report.tuned.metrics.get(name)
        if value is None:
            failures.append(f"{name} was not computed (known: {', '.join(report.tuned.metrics)})")
        elif (value < floor) if metrics.HIGHER_IS_BETTER.get(name, True) else (value > floor):
            word = "below" if metrics.HIGHER_IS_BETTER.get(name, True) else "above"
            failures.append(f"{name} is {value:.4g}, {word} the required {floor:g} by {abs(value - floor):.4g}")
    if must_beat_baseline:
        for name, delta in report.deltas().items():
            worse = delta < 0 if metrics.HIGHER_IS_BETTER[name] else delta > 0
            if worse:
                failures.append(f"{name}: tuned {report.tuned.metrics[name]:.4g} is worse than {report.baseline.name} "
                                f"{report.baseline.metrics[name]:.4g} by {abs(delta):.4g}")
    return failures

