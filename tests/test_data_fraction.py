"""Data fractions: stratified, nested for one seed, and exactly what training reads."""
from __future__ import annotations

from collections import Counter

import pytest

from spt_dist.config.schema import DataConfig
from spt_dist.data import (DataError, TrainData, read_selected_keys, select_count, select_fraction,
                           write_selected_keys)
from spt_dist.data.index import ShardIndex, ShardInfo, SplitInfo
from spt_dist.data.synthetic import tiny_shards


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    # 4 classes of 50, 50, 50, 50 ... via labels n % 4 over 200 samples in uneven shards.
    return tiny_shards(tmp_path_factory.mktemp("frac"), {"train": [70, 30, 100]}, num_classes=4, size=4)


def _class_counts(index, keys):
    labels = index.split("train").labels()
    return Counter(labels[k] for k in keys)


def test_fractions_are_nested_and_stratified(index):
    previous = set()
    for fraction in (0.01, 0.1, 0.2, 0.5, 1.0):
        keys = select_fraction(index, "train", fraction, seed=7)
        assert previous <= set(keys)
        assert _class_counts(index, keys) == {c: max(1, round(fraction * 50)) for c in range(4)}
        previous = set(keys)
    assert select_fraction(index, "train", 0.2, seed=7) == select_fraction(index, "train", 0.2, seed=7)
    assert select_fraction(index, "train", 0.2, seed=8) != select_fraction(index, "train", 0.2, seed=7)


def test_select_count_is_exact_and_balanced(index):
    keys = select_count(index, "train", 10, seed=0)
    assert len(keys) == 10 and sorted(_class_counts(index, keys).values()) == [2, 2, 3, 3]
    assert set(select_count(index, "train", 8, seed=0)) <= set(select_count(index, "train", 40, seed=0))
    assert select_count(index, "train", 40, seed=3) == select_fraction(index, "train", 0.2, seed=3)  # same ranking
    with pytest.raises(DataError, match="cannot select 201"):
        select_count(index, "train", 201, seed=0)


def test_recorded_keys_are_what_training_reads(index, tmp_path):
    cfg = DataConfig(batch_size=8, fraction=0.3, fraction_seed=5, num_workers=0)
    ranks = [TrainData(cfg, index, 4, [0.5] * 3, [0.5] * 3, r, 2, seed=1) for r in range(2)]
    assert ranks[0].selected_keys == ranks[1].selected_keys == select_fraction(index, "train", 0.3, 5)
    assert ranks[0].num_samples == 60 and ranks[0].batches_per_epoch == 3
    read = [k for d in ranks for _, _, keys in d.epoch(0) for k in keys]
    assert len(read) == len(set(read)) == 48 and set(read) <= set(ranks[0].selected_keys)
    path = write_selected_keys(tmp_path, ranks[0].selected_keys)
    assert path.name == "train_keys.txt" and read_selected_keys(tmp_path) == ranks[0].selected_keys


SIZES = [5, 11, 24, 40, 65]  # per class; 145 samples


@pytest.fixture(scope="module")
def imbalanced():
    """An index (no tars: selection reads only keys and labels) whose classes are interleaved in
    key order, over two shards."""
    labels = [c for c, n in enumerate(SIZES) for _ in range(n)]
    labels = [labels[(i * 37) % len(labels)] for i in range(len(labels))]  # a permutation: 37 is coprime to 145
    keys = [f"train-{i:07d}" for i in range(len(labels))]
    shards = [ShardInfo(f"train-{j:06d}.tar", keys[j * 80:(j + 1) * 80], labels[j * 80:(j + 1) * 80]) for j in (0, 1)]
    return ShardIndex(".", [f"class{c}" for c in range(len(SIZES))], {"train": SplitInfo("train", shards)})


def test_select_count_is_nested_and_proportional_on_an_imbalanced_split(imbalanced):
    total, classes = sum(SIZES), len(SIZES)
    order = imbalanced.split("train").keys()
    labels = imbalanced.split("train").labels()
    assert sorted(Counter(labels.values()).values()) == SIZES
    previous: list = []
    for n in range(1, total + 1):
        keys = select_count(imbalanced, "train", n, seed=3)
        assert len(keys) == len(set(keys)) == n and keys == [k for k in order if k in set(keys)]
        assert set(previous) < set(keys)  # one more sample than n - 1, all of those kept
        counts = [Counter(labels[k] for k in keys)[c] for c in range(classes)]
        if n >= classes:
            assert min(counts) >= 1, (n, counts)
        else:  # one each to the largest classes
            assert counts == [int(c >= classes - n) for c in range(classes)], (n, counts)
        for c, size in enumerate(SIZES):
            assert counts[c] <= -(-n * size // total), (n, c, counts)  # never above the ceiling of its share
            if n * SIZES[0] >= total:  # every share at least 1: not below the floor either
                assert counts[c] >= n * size // total, (n, c, counts)
        previous = keys
    assert set(previous) == set(order)
    assert select_count(imbalanced, "train", 60, seed=3) == select_count(imbalanced, "train", 60, seed=3)
    assert select_count(imbalanced, "train", 60, seed=4) != select_count(imbalanced, "train", 60, seed=3)
