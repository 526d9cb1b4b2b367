"""Batch orders: label-balanced rounds, fixed by seed and epoch so that a resumed run sees the same batches."""

from __future__ import annotations

from collections import Counter

from togi.train.sampling import LabelBalancedSampler


def test_every_round_holds_each_label_once_and_every_example_comes_once():
    labels = ["ポジ"] * 10 + ["ネガ"] * 10 + ["中立"] * 10
    order = list(LabelBalancedSampler(labels, seed=7))
    assert sorted(order) == list(range(30))
    for start in range(0, 30, 6):  # a batch of 6 = two rounds: two of each label
        assert Counter(labels[i] for i in order[start : start + 6]) == {"ポジ": 2, "ネガ": 2, "中立": 2}


def test_the_surplus_and_the_unlabelled_come_after_the_balanced_rounds():
    labels = ["a"] * 5 + ["b"] * 2 + [None]
    order = list(LabelBalancedSampler(labels, seed=0))
    assert Counter(labels[i] for i in order[:4]) == {"a": 2, "b": 2}
    assert Counter(labels[i] for i in order[4:]) == {"a": 3, None: 1}


def test_the_order_depends_on_seed_and_epoch_only():
    labels = ["a", "b", "c"] * 8
    sampler = LabelBalancedSampler(labels, seed=3)
    first = list(sampler)
    assert list(LabelBalancedSampler(labels, seed=3)) == first  # a resumed run: the same epoch, the same order
    sampler.set_epoch(1)
    assert list(sampler) != first  # each epoch reshuffles
    assert list(LabelBalancedSampler(labels, seed=4)) != first
