"""Human review through piped standard input: every score lands in the CSV at once, and it resumes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys


def write_records(path):
    records = [{"model": "tuned", "index": i, "line": i + 1, "input": f"質問{i}", "reference": f"正解{i}", "prediction": f"回答{i}"}
               for i in range(2)]
    records.append({"model": "base", "index": 0, "line": 1, "input": "質問0", "reference": "正解0", "prediction": "別の回答"})
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def review(records, scores, typed: str):
    return subprocess.run([sys.executable, "-m", "togi", "eval", "review", str(records), "--scores", str(scores)],
                          input=typed, capture_output=True, text=True, timeout=120)


def rows(path):
    with path.open(encoding="utf-8", newline="") as handle:
        return [(int(r["index"]), r["criterion"], int(r["score"])) for r in csv.DictReader(handle)]


def test_scores_from_a_pipe_with_bad_answers_asked_again(tmp_path):
    scores = tmp_path / "review.csv"
    result = review(write_records(tmp_path / "records.jsonl"), scores, "5\n4\n3\nx\n9\n2\n1\n0\n")
    assert result.returncode == 0, result.stderr
    assert "正解1" in result.stdout and "回答1" in result.stdout and "別の回答" not in result.stdout
    assert "please type a whole number from 0 to 5 (got 'x')" in result.stdout
    assert rows(scores) == [(0, "accuracy", 5), (0, "relevance", 4), (0, "expertise", 3),
                            (1, "accuracy", 2), (1, "relevance", 1), (1, "expertise", 0)]
    assert "3.50" in result.stdout and "2.50" in result.stdout and "1.50" in result.stdout  # the means


def test_a_review_cut_short_keeps_its_scores_and_continues_where_it_stopped(tmp_path):
    records, scores = write_records(tmp_path / "records.jsonl"), tmp_path / "review.csv"
    first = review(records, scores, "5\n4\n")
    assert first.returncode == 0 and "run the same command to continue" in first.stdout
    assert rows(scores) == [(0, "accuracy", 5), (0, "relevance", 4)]
    second = review(records, scores, "3\n2\n1\n0\n")
    assert "回答0" in second.stdout  # the unfinished example is shown again for its last score
    assert rows(scores) == [(0, "accuracy", 5), (0, "relevance", 4), (0, "expertise", 3),
                            (1, "accuracy", 2), (1, "relevance", 1), (1, "expertise", 0)]


def test_reviewing_the_baseline_answers(tmp_path):
    scores = tmp_path / "base.csv"
    result = review(write_records(tmp_path / "records.jsonl"), scores, "1\n1\n1\n")
    assert "別の回答" not in result.stdout  # tuned by default
    result = subprocess.run([sys.executable, "-m", "togi", "eval", "review", str(tmp_path / "records.jsonl"), "--scores",
                             str(tmp_path / "b.csv"), "--model", "base"], input="2\n2\n2\n", capture_output=True, text=True, timeout=120)
    assert "別の回答" in result.stdout and len(rows(tmp_path / "b.csv")) == 3
