"""`togi eval`: the tuned model and its baseline answer the same prompts, scored the same way."""

from __future__ import annotations

import json
import re

import pytest

from togi.config import load_config
from togi.evaluate.runner import EvalOptions, EvalReport, ModelScores, evaluate_run, gate_failures
from togi.train import train

from conftest import distinct_chats, judge_server, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory, tiny_model_dir):
    directory = tmp_path_factory.mktemp("eval")
    train_file = write_jsonl(directory / "train.jsonl", distinct_chats(24))
    config = load_config(None, [f"model={tiny_model_dir}", f"data.train_file={train_file}", f"output_dir={directory / 'run'}",
                                "training.max_steps=8", "training.batch_size=4", "training.gradient_accumulation=1",
                                "training.learning_rate=1e-2", "monitoring.samples=0", "data.val_ratio=0"])
    train(config, log=lambda message: None)
    test_file = write_jsonl(directory / "test.jsonl", distinct_chats(30)[24:])
    return directory / "run", test_file


def test_tuned_and_base_are_scored_on_the_same_examples(tuned_run):
    run_dir, test_file = tuned_run
    report = evaluate_run(run_dir, EvalOptions(data=test_file, batch_size=4, max_new_tokens=12, label_pattern=r"在庫が(\d+)点"))
    assert report.n_examples == 6 and report.baseline.name == "base"
    for side in (report.tuned, report.baseline):
        assert {"exact_match", "rougeL", "bleu", "chrf", "mean_token_loss", "perplexity", "accuracy", "macro_f1"} <= set(side.metrics)
        assert len(side.records) == 6 and all(r["latency_seconds"] > 0 for r in side.records)
        assert side.metrics["rougeL"] == pytest.approx(sum(r["rougeL"] for r in side.records) / 6, abs=1e-5)  # traceable
    assert report.deltas()["rougeL"] == pytest.approx(report.tuned.metrics["rougeL"] - report.baseline.metrics["rougeL"])
    assert report.tuned.metrics["mean_token_loss"] < report.baseline.metrics["mean_token_loss"]  # tuning lowered the loss
    assert [r["expected_label"] for r in report.tuned.records] == [str(i) for i in range(24, 30)]
    finished = sum(not r["hit_limit"] for r in report.tuned.records)
    assert all(r["hit_limit"] == (r["new_tokens"] >= 12) for r in report.tuned.records)
    assert report.summary() == (f"label accuracy {report.baseline.metrics['accuracy']:.2f} (base) → {report.tuned.metrics['accuracy']:.2f} "
                                f"(tuned) on 6 held-out examples; {finished} of 6 tuned answers ended before the length limit")


def test_deploy_gate_names_the_metric_and_the_margin():
    def side(name, **values):
        return ModelScores(name=name, metrics=values, latency_seconds=0.1, tokens_per_second=10.0)

    report = EvalReport(run_dir="r", data="d", n_examples=3, bleu_tokenizer="char",
                        tuned=side("tuned", rougeL=0.30, perplexity=4.0), baseline=side("base", rougeL=0.35, perplexity=5.0))
    assert gate_failures(report, {"rougeL": 0.25}, False) == []
    assert gate_failures(report, {"rougeL": 0.4}, False) == ["rougeL is 0.3, below the required 0.4 by 0.1"]
    assert gate_failures(report, {"perplexity": 3.5}, False) == ["perplexity is 4, above the required 3.5 by 0.5"]
    assert gate_failures(report, {}, True) == ["rougeL: tuned 0.3 is worse than base 0.35 by 0.05"]
    assert "not computed" in gate_failures(report, {"accuracy": 0.5}, False)[0]


def test_cli_writes_the_report_and_fails_the_gate_with_exit_1(cli, tuned_run, tmp_path):
    run_dir, test_file = tuned_run
    result = cli("eval", run_dir, "--data", test_file, "--max-new-tokens", "8", "--out", tmp_path, "--fail-below", "exact_match=0.99")
    assert result.exit_code == 1
    assert "gate failed: exact_match is 0, below the required 0.99 by 0.99" in result.stdout
    assert "ROUGE-L" in result.stdout and "(base) →" in result.stdout  # no labels: the summary speaks of ROUGE-L
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_examples"] == 6 and set(report["deltas"]) == set(report["tuned"]["metrics"])
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert sorted({r["model"] for r in records}) == ["base", "tuned"] and len(records) == 12
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page  # the loss curve travels inside the file
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing fetched from elsewhere
    assert page.count("<tr>") == 1 + len(report["deltas"]) + 1 + 6  # header, metrics, examples header, examples


def test_cli_refuses_a_directory_that_is_not_a_run(cli, tmp_path):
    result = cli("eval", tmp_path, "--data", write_jsonl(tmp_path / "t.jsonl", distinct_chats(3)))
    assert result.exit_code == 2 and "not a togi run directory" in result.stderr


def test_the_judge_verdicts_go_into_the_report(cli, tuned_run, biased_judge_dir, tmp_path):
    run_dir, test_file = tuned_run
    with judge_server(biased_judge_dir) as base_url:
        result = cli("eval", run_dir, "--data", test_file, "--max-new-tokens", "8", "--out", tmp_path,
                     "--judge-url", base_url, "--judge-model", "tiny-judge")
    assert result.exit_code == 0, result.output
    judge = json.loads((tmp_path / "report.json").read_text())["judge"]
    assert (judge["wins"], judge["ties"], judge["losses"]) == (0, 6, 0)  # an always-"A" judge decides nothing
    assert "0 wins, 6 ties, 0 losses" in result.stdout
    assert len((tmp_path / "judgements.jsonl").read_text().splitlines()) == 6


def test_differences_from_the_expected_answer_are_marked():
    from togi.evaluate.html_report import _marked

    assert _marked("ラベル: ネガティブ", "ラベル: ポジティブ") == "ラベル: <mark>ネガ</mark>ティブ"
    assert _marked("<b>", "x") == "<mark>&lt;b&gt;</mark>"  # answers are escaped, never interpreted


def test_a_broken_label_pattern_is_a_usage_error(cli, tuned_run):
    run_dir, test_file = tuned_run
    result = cli("eval", run_dir, "--data", test_file, "--label-pattern", "ラベル: (")
    assert result.exit_code == 2 and "not a valid regular expression" in result.stderr
