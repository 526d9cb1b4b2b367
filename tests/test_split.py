"""Splits: deterministic, nothing lost or repeated, stratified splits keep class proportions."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from togi.data.split import SplitError, split_indices

from conftest import BROKEN, DEMO, distinct_chats, write_jsonl


def test_every_example_lands_in_exactly_one_split():
    split = split_indices(101, val_ratio=0.1, test_ratio=0.2, seed=7)
    assert sorted(split.train + split.val + split.test) == list(range(101))
    assert (len(split.val), len(split.test)) == (10, 20)
    assert split.train == sorted(split.train)  # original order kept


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    assert split_indices(50, 0.2, seed=1) == split_indices(50, 0.2, seed=1)
    assert split_indices(50, 0.2, seed=1) != split_indices(50, 0.2, seed=2)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("val_ratio,test_ratio", [(0.1, 0.0), (0.15, 0.1), (0.33, 0.33)])
def test_stratified_split_keeps_each_class_within_one_example_of_its_share(seed, val_ratio, test_ratio):
    labels = ["a"] * 37 + ["b"] * 23 + ["c"] * 11 + ["d"] * 2
    split = split_indices(len(labels), val_ratio, test_ratio, labels=labels, seed=seed)
    assert sorted(split.train + split.val + split.test) == list(range(len(labels)))
    sizes = Counter(labels)
    for part, ratio in ((split.val, val_ratio), (split.test, test_ratio)):
        counts = Counter(labels[i] for i in part)
        for label, size in sizes.items():
            assert abs(counts[label] - size * ratio) < 1, (label, counts[label], size * ratio)


def test_impossible_ratios_are_refused():
    with pytest.raises(SplitError):
        split_indices(10, 0.6, 0.5)
    with pytest.raises(SplitError, match="too few"):
        split_indices(2, 0.5, 0.5 - 1e-9)


def test_cli_split_of_the_demo_set_is_stratified_and_keeps_the_format(cli, tmp_path):
    result = cli("data", "split", DEMO, "--val-ratio", "0.1", "--test-ratio", "0.1", "--stratify", "label",
                 "--label-pattern", r"ラベル: (\S+)", "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    parts = {name: (tmp_path / f"reviews.{name}.jsonl").read_text(encoding="utf-8").splitlines() for name in ("train", "val", "test")}
    assert [len(lines) for lines in parts.values()] == [192, 24, 24]
    original = DEMO.read_text(encoding="utf-8").splitlines()
    assert sorted(line for lines in parts.values() for line in lines) == sorted(original)
    assert "ラベル" in parts["val"][0]  # written with ensure_ascii=False
    for name in ("val", "test"):
        labels = Counter(json.loads(line)["messages"][-1]["content"].split("\n")[0] for line in parts[name])
        assert set(labels.values()) == {8}
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_cli_split_of_a_csv_writes_csv_with_the_same_header(cli, tmp_path):
    source = tmp_path / "faq.csv"
    with source.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "answer"])
        writer.writerows([[f"質問{i}: 配送は何日かかりますか", f"{i}日で届きます。"] for i in range(20)])
    result = cli("data", "split", source, "--val-ratio", "0.25")
    assert result.exit_code == 0, result.output
    with (tmp_path / "faq.val.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["question", "answer"] and len(rows) == 6


def test_cli_split_refuses_a_file_with_errors_and_writes_nothing(cli, tmp_path):
    result = cli("data", "split", BROKEN / "openai_rules.jsonl", "--out-dir", tmp_path)
    assert result.exit_code == 1
    assert "nothing was written" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_stratifying_chat_data_without_a_label_pattern_says_how(cli, tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", distinct_chats(20))
    result = cli("data", "split", path, "--stratify", "label")
    assert result.exit_code == 2
    assert "--label-pattern" in result.stderr
