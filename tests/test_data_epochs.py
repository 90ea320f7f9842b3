"""Epoch order in both modes: repeatable per seed, different per epoch, exact resume by
skip_batches; stream mode's shared shard shuffle and buffer."""
from __future__ import annotations

import pytest
import torch

from spt_dist.config.schema import DataConfig
from spt_dist.data import DataError, EvalData, TrainData
from spt_dist.data.synthetic import tiny_shards

MEAN, STD = [0.5] * 3, [0.25] * 3


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return tiny_shards(tmp_path_factory.mktemp("ep"), {"train": [6, 6, 6, 6, 6, 6, 5], "test": [7]}, size=12)


def _data(index, rank=0, world=2, seed=0, **kw):
    cfg = DataConfig(**{"batch_size": 4, "shuffle_buffer": 6, "num_workers": 0, **kw})
    return TrainData(cfg, index, 10, MEAN, STD, rank, world, seed)


def _keys(data, epoch, skip=0):
    return [keys for _, _, keys in data.epoch(epoch, skip_batches=skip)]


def _shard_order(index, batches):
    shard_of = {k: s.name for s in index.split("train").shards for k in s.keys}
    seen = []
    for k in (k for b in batches for k in b):
        if shard_of[k] not in seen:
            seen.append(shard_of[k])
    return seen


@pytest.mark.parametrize("mode", ["exact", "stream"])
def test_epochs_differ_and_seed_repeats(index, mode):
    for rank in range(2):
        data = _data(index, rank=rank, shuffle_buffer=0, shuffle=mode)
        e0, e1 = _keys(data, 0), _keys(data, 1)
        assert e0 != e1
        if mode == "stream":
            assert _shard_order(index, e0) != _shard_order(index, e1)
        assert _keys(_data(index, rank=rank, shuffle_buffer=0, shuffle=mode), 0) == e0  # same seed, same order
        assert _keys(_data(index, rank=rank, seed=1, shuffle_buffer=0, shuffle=mode), 0) != e0


def test_shuffle_buffer_mixes_within_rank(index):
    plain = _keys(_data(index, shuffle_buffer=0, shuffle="stream", stream_shards=1), 0)
    mixed = _keys(_data(index, shuffle_buffer=6, shuffle="stream", stream_shards=1), 0)
    flat = lambda b: [k for x in b for k in x]  # noqa: E731
    assert sorted(flat(plain)) == sorted(flat(mixed)) and flat(plain) != flat(mixed)


@pytest.mark.parametrize("mode", ["exact", "stream"])
@pytest.mark.parametrize("workers", [0, 2, 3])
@pytest.mark.parametrize("world, drop_last, batches", [(2, True, 41 // 8), (1, False, 11)])  # 11 = ceil(41 / 4)
def test_skip_batches_gives_exact_tail(index, workers, mode, world, drop_last, batches):
    data = _data(index, world=world, num_workers=workers, preset="fgvc", shuffle=mode,  # fgvc: random crops, flips
                 drop_last=drop_last)
    full = list(data.epoch(1))
    assert len(full) == data.batches_per_epoch == batches
    for k in range(data.batches_per_epoch + 1):
        tail = list(data.epoch(1, skip_batches=k))
        assert [b[2] for b in tail] == [b[2] for b in full[k:]]
        for (img_a, lab_a, _), (img_b, lab_b, _) in zip(tail, full[k:]):
            assert torch.equal(img_a, img_b) and torch.equal(lab_a, lab_b)  # same augmentation


@pytest.mark.parametrize("mode", ["exact", "stream"])
@pytest.mark.parametrize("workers", [0, 2])
def test_kept_last_batch_is_short_and_every_sample_is_read_once_per_epoch(index, mode, workers):
    n = index.split("train").num_samples
    assert n == 41
    data = _data(index, world=1, batch_size=8, num_workers=workers, shuffle=mode, drop_last=False)
    # VPT's loader on one GPU: DataLoader(shuffle=True, drop_last=False), len(loader) steps per epoch.
    vpt_steps = len(torch.utils.data.DataLoader(range(n), batch_size=8, shuffle=True, drop_last=False))
    assert data.batches_per_epoch == vpt_steps == 6
    for epoch in (0, 1):
        batches = _keys(data, epoch)
        assert [len(b) for b in batches] == [8, 8, 8, 8, 8, 1]  # the last one short
        flat = [k for b in batches for k in b]
        assert len(flat) == len(set(flat)) and set(flat) == set(index.split("train").keys())
    assert _keys(data, 0) != _keys(data, 1)
    dropped = _data(index, world=1, batch_size=8, num_workers=workers, shuffle=mode)
    assert dropped.batches_per_epoch == 5 and [len(b) for b in _keys(dropped, 0)] == [8] * 5


def test_kept_last_batch_needs_a_single_rank(index, tmp_path):
    from spt_dist.config import ConfigError, load_config
    from spt_dist.engine import preflight

    message = r"config key 'data.drop_last' = false .* the run has 2 ranks; allowed: true, or false on one rank"
    with pytest.raises(DataError, match=message):
        _data(index, world=2, drop_last=False)
    with pytest.raises(ConfigError, match=message):  # when the launcher's world size says so
        load_config(None, ["data.drop_last=false", "launch.tasks_per_node=2"])
    with pytest.raises(ConfigError, match=message.replace("2 ranks", "4 ranks")):
        load_config(None, ["data.drop_last=false", "launch.nodes=2", "launch.tasks_per_node=2"])
    cfg = load_config(None, ["data.drop_last=false"])  # one task per node: torchrun may still start more
    with pytest.raises(ConfigError, match=message):
        preflight.check_run(cfg, 2)  # at train start, with the real world size
    preflight.check_run(cfg, 1)
    assert preflight.check_accumulation(cfg, 41, 1) == 2  # ceil(41 / 32), as the data stage counts
    assert preflight.check_accumulation(load_config(None), 41, 1) == 1


def _windows(data, epochs, accum):
    """(epoch, batch) of every micro-batch per optimizer step, by the engine's rule (train.py:
    a step after every `accum`-th micro-batch, counted across epochs), and those left unstepped."""
    steps, window, seen = [], [], 0
    for epoch in range(epochs):
        for b, _ in enumerate(data.planned_keys(epoch)):
            window.append((epoch, b))
            seen += 1
            if seen % accum == 0:
                steps.append(window)
                window = []
    return steps, window


def test_kept_last_batch_with_accumulation_fills_whole_windows_or_is_refused(index):
    from spt_dist.config import ConfigError, load_config
    from spt_dist.engine import preflight

    # 41 samples at batch 8: 6 micro-batches an epoch, the last one short.
    for accum in (2, 3, 6):
        data = TrainData(DataConfig(batch_size=8, num_workers=0, drop_last=False), index, 10, MEAN, STD, 0, 1,
                         seed=0, grad_accum=accum)
        steps, left = _windows(data, 3, accum)
        assert left == [] and len(steps) == 3 * 6 // accum
        assert all(len({e for e, _ in w}) == 1 for w in steps)  # no step takes batches of two epochs
        preflight.check_accumulation(load_config(None, ["data.drop_last=false", "data.batch_size=8",
                                                        f"optim.grad_accum={accum}"]), 41, 1)
    # 4 does not divide 6; batch 11 gives 4 micro-batches, no batch size below 8 a multiple of 4.
    message = (r"config key 'optim.grad_accum' = 4 with data.drop_last=false: .* ceil\(41 / data.batch_size 8\) = 6 "
               r"micro-batches .* allowed: data.drop_last=true, optim.grad_accum 1, 2, 3, 6 \(divisors of 6\), "
               r"or data.batch_size 11 with optim.grad_accum 4$")
    with pytest.raises(DataError, match=message):
        TrainData(DataConfig(batch_size=8, num_workers=0, drop_last=False), index, 10, MEAN, STD, 0, 1, seed=0,
                  grad_accum=4)
    cfg = load_config(None, ["data.drop_last=false", "data.batch_size=8", "optim.grad_accum=4"])
    with pytest.raises(ConfigError, match=message):
        preflight.check_run(cfg, 1, None, 41)  # on the login node: index.json's count, before any step
    preflight.check_accumulation(load_config(None, ["data.batch_size=8", "optim.grad_accum=4"]), 41, 1)  # drop_last


def test_batches_are_float_images_and_int_labels(index):
    images, labels, keys = next(iter(_data(index).epoch(0)))
    assert images.shape == (4, 3, 10, 10) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and len(keys) == 4
    labels_of = index.split("train").labels()
    assert labels.tolist() == [labels_of[k] for k in keys]


def test_too_few_samples_is_a_clear_error(index):
    with pytest.raises(DataError, match="world_size 8 x data.batch_size 8"):
        _data(index, world=8, rank=0, batch_size=8)
    with pytest.raises(DataError, match="skip_batches=9"):
        list(_data(index).epoch(0, skip_batches=9))


def test_eval_keys_subset_and_short_last_batch(index):
    cfg = DataConfig(eval_batch_size=3)
    keys = ["test-0000001", "test-0000004", "test-0000006"]
    got = [k for _, _, ks in EvalData(cfg, index, "test", 10, MEAN, STD, 0, 1, keys=keys) for k in ks]
    assert got == keys
    sizes = [len(k) for _, _, k in EvalData(cfg, index, "test", 10, MEAN, STD, 0, 1)]
    assert sizes == [3, 3, 1]
    with pytest.raises(DataError, match="not in split 'test'"):
        EvalData(cfg, index, "test", 10, MEAN, STD, 0, 1, keys=["train-0000000"])
    with pytest.raises(DataError, match="no split 'nope'"):
        EvalData(cfg, index, "nope", 10, MEAN, STD, 0, 1)
