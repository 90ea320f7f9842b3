"""Bad data (truncated tar, corrupt image, no label, label out of range) in both modes."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from spt_dist.config.schema import DataConfig
from spt_dist.data import BadSampleError, EvalData, ShardIndex, TrainData
from spt_dist.data.index import ShardInfo, SplitInfo
from spt_dist.data.synthetic import tiny_image

MEAN, STD = [0.5] * 3, [0.25] * 3
N = 12  # 2 shards x 6; batch 4 on one rank: nothing dropped, so every bad sample is read


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _build(root, damage):
    """Two shards of 6 samples; `damage(i, image, cls)` may change sample 3's members."""
    rng = np.random.default_rng(0)
    shards = []
    for s in range(2):
        members, keys, labels = [], [], []
        for i in range(s * 6, s * 6 + 6):
            key, label = f"k{i:03d}", i % 3
            img, cls = tiny_image(label, 3, 8, rng), str(label).encode()
            if i == 3:
                img, cls = damage(img, cls)
            members += [(f"{key}.png", img)] + ([(f"{key}.cls", cls)] if cls is not None else [])
            keys.append(key)
            labels.append(label)
        _tar(root / f"train-{s}.tar", members)
        shards.append(ShardInfo(f"train-{s}.tar", keys, labels))
    index = ShardIndex(root, ["a", "b", "c"], {"train": SplitInfo("train", shards)}, {"kind": "test"})
    index.save()
    return index


def _truncate(root):
    path = root / "train-0.tar"
    with tarfile.open(path) as tar:
        cut = tar.getmember("k004.png").offset_data + 10  # inside sample 4's image
    path.write_bytes(path.read_bytes()[:cut])


DAMAGE = {
    "corrupt image": (lambda img, cls: (img[:20] + b"garbage" * 5, cls), "cannot be decoded", 1),
    "no label": (lambda img, cls: (img, None), r"no label \(.cls\)", 1),
    "label out of range": (lambda img, cls: (img, b"7"), "label 7 outside the class range 0..2", 1),
    # Cut inside k004: k003 (still being grouped when the tar breaks), k004 and k005 are lost.
    "truncated tar": (lambda img, cls: (img, cls), "truncated", 3),
}


@pytest.fixture(params=list(DAMAGE))
def damaged(request, tmp_path):
    damage, message, bad = DAMAGE[request.param]
    index = _build(tmp_path, damage)
    if request.param == "truncated tar":
        _truncate(tmp_path)
    return index, message, bad


def _train(index, mode, workers=0):
    cfg = DataConfig(batch_size=4, shuffle_buffer=5, on_bad_sample=mode, num_workers=workers)
    return TrainData(cfg, index, 8, MEAN, STD, 0, 1, seed=0)


def _eval(index, mode, workers=0):
    cfg = DataConfig(eval_batch_size=5, on_bad_sample=mode, num_workers=workers)
    return EvalData(cfg, index, "train", 8, MEAN, STD, 0, 1)


def test_error_mode_names_shard_and_key(damaged):
    index, message, _ = damaged
    # With workers the error crosses the DataLoader; one kind suffices (a failed loader
    # costs torch's 5 s worker-join timeout per worker on shutdown).
    workers = (0, 2) if message == "cannot be decoded" else (0,)
    for w in workers:
        with pytest.raises(BadSampleError, match=rf"train-0\.tar, key 'k00[34]': .*{message}"):
            list(_train(index, "error", workers=w).epoch(0))
    with pytest.raises(BadSampleError, match=message):
        list(_eval(index, "error"))


def test_skip_mode_counts_and_keeps_batch_counts(damaged):
    index, _, bad = damaged
    data = _train(index, "skip")
    batches = [keys for _, _, keys in data.epoch(0)]
    assert len(batches) == data.batches_per_epoch == 3 and all(len(k) == 4 for k in batches)
    assert data.bad_samples == bad
    flat = [k for b in batches for k in b]
    assert "k003" not in flat and len(set(flat)) == N - bad  # bad ones replaced by repeats
    resumed = [keys for _, _, keys in data.epoch(0, skip_batches=1)]
    assert resumed == batches[1:]
    ev = _eval(index, "skip")
    keys = [k for _, _, ks in ev for k in ks]
    assert len(keys) == N - bad and ev.bad_samples == bad


def test_eval_bad_samples_count_each_pass(damaged):
    # The engine logs `bad_samples` with every val/test result: it must be this pass's count.
    index, message, bad = damaged
    for workers in (0, 2) if message == "cannot be decoded" else (0,):
        ev = _eval(index, "skip", workers)
        for _ in range(2):
            assert sum(len(keys) for _, _, keys in ev) == N - bad and ev.bad_samples == bad
