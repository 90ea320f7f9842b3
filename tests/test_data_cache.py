"""The decoded-sample cache (data.cache_mb): batches bit-identical to a reader without it, in
both shuffle modes, with and without DataLoader workers, across epochs and resume points;
a cached epoch reads and decodes nothing (also in forked workers); the byte bound holds;
bad samples are skipped and counted exactly as without it."""
from __future__ import annotations

import pytest
import torch

from spt_dist.config.schema import DataConfig
from spt_dist.data import TrainData, loader
from spt_dist.data.reader import SampleReader
from spt_dist.data.synthetic import tiny_shards

from test_data_bad import DAMAGE, _build

MEAN, STD = [0.5] * 3, [0.25] * 3


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("cache"), {"train": [9, 9, 9, 9, 5]}, size=14)


def _data(index, cache_mb, world=1, rank=0, **kw):
    cfg = DataConfig(**{"batch_size": 4, "shuffle_buffer": 6, "cache_mb": cache_mb, **kw})
    return TrainData(cfg, index, 10, MEAN, STD, rank, world, seed=3)


def _same(a, b):
    assert [x[2] for x in a] == [x[2] for x in b]
    for (img_a, lab_a, _), (img_b, lab_b, _) in zip(a, b):
        assert img_a.dtype == img_b.dtype and torch.equal(img_a, img_b) and torch.equal(lab_a, lab_b)


@pytest.mark.parametrize("preset, shuffle, workers", [
    ("fgvc", "exact", 2), ("spt_fgvc", "stream", 0), ("vtab", "exact", 0), ("small", "stream", 0),
    ("spt_vtab", "exact", 0),
])
def test_batches_are_bit_identical_with_and_without_the_cache(index, preset, shuffle, workers):
    for rank in (0, 1) if not workers else (1,):  # forked workers are slow to start: one rank
        kw = dict(world=2, rank=rank, preset=preset, shuffle=shuffle, num_workers=workers)
        plain, cached = _data(index, 0, **kw), _data(index, 64, **kw)
        assert cached.cache is not None and plain.cache is None
        first = list(cached.epoch(0))
        _same(list(plain.epoch(0)), first)
        read = {k for _, _, keys in first for k in keys}
        assert len(cached.cache) == len(read) == 4 * cached.batches_per_epoch  # kept after the first epoch
        for epoch in (1, 2):  # random crops and flips still differ per epoch, seeded per key
            _same(list(plain.epoch(epoch)), list(cached.epoch(epoch)))
        _same(list(plain.epoch(2, skip_batches=3)), list(cached.epoch(2, skip_batches=3)))  # resume point


@pytest.mark.parametrize("shuffle", ["exact", "stream"])
def test_a_cached_epoch_reads_and_decodes_nothing_also_in_forked_workers(index, shuffle, monkeypatch):
    data = _data(index, 64, preset="fgvc", shuffle=shuffle, num_workers=2, drop_last=False)
    list(data.epoch(0))  # one rank, every sample read once
    assert len(data.cache) == index.split("train").num_samples

    def refuse(*args, **kwargs):
        raise AssertionError("a cached sample was read or decoded")

    # Patched before the next epoch forks its workers: they inherit the patches and the cache.
    monkeypatch.setattr(loader, "decode_sample", refuse)
    monkeypatch.setattr(loader, "read_segment", refuse)
    monkeypatch.setattr(SampleReader, "read", refuse)
    again = list(data.epoch(1))
    assert sum(len(k) for _, _, k in again) == index.split("train").num_samples


def test_the_byte_bound_holds_and_the_rest_is_decoded_every_epoch(index):
    plain, cached = _data(index, 0, preset="fgvc", num_workers=2), _data(index, 1, preset="fgvc", num_workers=2)
    sample_bytes = 11 * 11 * 3  # fgvc at 10 px keeps the short side resized to 10 * 256 // 224 = 11
    cached.cache.limit = 7 * sample_bytes
    for epoch in (0, 1):
        _same(list(plain.epoch(epoch)), list(cached.epoch(epoch)))
        assert len(cached.cache) == 7 and cached.cache.nbytes == 7 * sample_bytes


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_are_skipped_and_counted_as_without_the_cache(tmp_path, workers):
    damage, _, _ = DAMAGE["corrupt image"]
    index = _build(tmp_path, damage)
    runs = []
    for cache_mb in (0, 64):
        cfg = DataConfig(batch_size=4, cache_mb=cache_mb, on_bad_sample="skip", num_workers=workers)
        data = TrainData(cfg, index, 8, MEAN, STD, 0, 1, seed=0)
        runs.append(([b for e in range(3) for b in data.epoch(e)], data.bad_samples, data.cache))
    _same(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1] == 3  # the bad sample fails again every epoch, never kept
    assert len(runs[1][2]) == 11 and "k003" not in runs[1][2]
