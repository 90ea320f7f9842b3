"""Data fractions: stratified, nested for one seed, and exactly what training reads."""
from __future__ import annotations

from collections import Counter

import pytest

from spt_dist.config.schema import DataConfig
from spt_dist.data import (DataError, TrainData, read_selected_keys, select_count, select_fraction,
                           write_selected_keys)
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
