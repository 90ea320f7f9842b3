"""Bad data in both training modes and in evaluation: an image that cannot be decoded, a label
outside the classes, and tar bytes or labels changed after the index was written."""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from spt_dist.config.schema import DataConfig
from spt_dist.data import BadSampleError, EvalData, ShardIndex, TrainData
from spt_dist.data.index import SplitInfo
from spt_dist.data.synthetic import tiny_image
from spt_dist.data.tarscan import scan_shard

MEAN, STD = [0.5] * 3, [0.25] * 3
N = 12  # 2 shards x 6; batch 4 on one rank: nothing dropped, so every bad sample is read


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _build(root, damage):
    """Two shards of 6 samples; `damage(image, cls)` may change sample k003's members before
    the index is made from the tars (the index then describes them as they are)."""
    rng = np.random.default_rng(0)
    for s in range(2):
        members = []
        for i in range(s * 6, s * 6 + 6):
            key, label = f"k{i:03d}", i % 3
            img, cls = tiny_image(label, 3, 8, rng), str(label).encode()
            if i == 3:
                img, cls = damage(img, cls)
            members += [(f"{key}.png", img), (f"{key}.cls", cls)]
        _tar(root / f"train-{s}.tar", members)
    shards = [scan_shard(root / f"train-{s}.tar") for s in range(2)]
    index = ShardIndex(root, ["a", "b", "c"], {"train": SplitInfo("train", shards)}, {"kind": "test"})
    index.save()
    return index


def _overwrite(root, member, data):
    """Change a member's bytes in place (same length): the tar changed after it was indexed."""
    path = root / "train-0.tar"
    with tarfile.open(path) as tar:
        at = tar.getmember(member).offset_data
    raw = bytearray(path.read_bytes())
    raw[at:at + len(data)] = data
    path.write_bytes(bytes(raw))


DAMAGE = {
    "corrupt image": (lambda img, cls: (img[:20] + b"garbage" * 5, cls), "cannot be decoded", None),
    "label out of range": (lambda img, cls: (img, b"7"), "label 7 outside the class range 0..2", None),
    "image bytes changed": (None, "image bytes differ from index.json's digest",
                            lambda root: _overwrite(root, "k003.png", b"\0" * 16)),
    "label changed": (None, r"the tar's .cls says 1 but index.json says 0",
                      lambda root: _overwrite(root, "k003.cls", b"1")),
}


@pytest.fixture(params=list(DAMAGE))
def damaged(request, tmp_path):
    damage, message, after = DAMAGE[request.param]
    _build(tmp_path, damage or (lambda img, cls: (img, cls)))
    if after:
        after(tmp_path)
    return ShardIndex.load(tmp_path), message


def _train(index, mode, workers=0, shuffle="exact"):
    cfg = DataConfig(batch_size=4, shuffle_buffer=5, on_bad_sample=mode, num_workers=workers, shuffle=shuffle)
    return TrainData(cfg, index, 8, MEAN, STD, 0, 1, seed=0)


def _eval(index, mode, workers=0):
    cfg = DataConfig(eval_batch_size=5, on_bad_sample=mode, num_workers=workers)
    return EvalData(cfg, index, "train", 8, MEAN, STD, 0, 1)


@pytest.mark.parametrize("shuffle", ["exact", "stream"])
def test_error_mode_names_shard_and_key(damaged, shuffle):
    index, message = damaged
    # With workers the error crosses the DataLoader; one kind suffices (a failed loader
    # costs torch's 5 s worker-join timeout per worker on shutdown).
    workers = (0, 2) if message == "cannot be decoded" and shuffle == "exact" else (0,)
    for w in workers:
        with pytest.raises(BadSampleError, match=rf"train-0\.tar, key 'k003': .*{message}"):
            list(_train(index, "error", workers=w, shuffle=shuffle).epoch(0))
    with pytest.raises(BadSampleError, match=message):
        list(_eval(index, "error"))


@pytest.mark.parametrize("shuffle", ["exact", "stream"])
def test_skip_mode_counts_and_keeps_batch_counts(damaged, shuffle):
    index, _ = damaged
    data = _train(index, "skip", shuffle=shuffle)
    batches = [keys for _, _, keys in data.epoch(0)]
    assert len(batches) == data.batches_per_epoch == 3 and all(len(k) == 4 for k in batches)
    assert data.bad_samples == 1
    flat = [k for b in batches for k in b]
    assert "k003" not in flat and len(set(flat)) == N - 1  # the bad one replaced by a repeat
    resumed = [keys for _, _, keys in data.epoch(0, skip_batches=1)]
    assert resumed == batches[1:]
    ev = _eval(index, "skip")
    keys = [k for _, _, ks in ev for k in ks]
    assert len(keys) == N - 1 and ev.bad_samples == 1


def test_eval_bad_samples_count_each_pass(damaged):
    # The engine logs `bad_samples` with every val/test result: it must be this pass's count.
    index, message = damaged
    for workers in (0, 2) if message == "cannot be decoded" else (0,):
        ev = _eval(index, "skip", workers)
        for _ in range(2):
            assert sum(len(keys) for _, _, keys in ev) == N - 1 and ev.bad_samples == 1


def test_tar_broken_inside_a_sample_fails_in_stream_and_exact(tmp_path):
    """A header destroyed after indexing (same size): the stream loses the rest of the shard,
    random access only the sample whose bytes changed."""
    index = _build(tmp_path, lambda img, cls: (img, cls))
    with tarfile.open(tmp_path / "train-0.tar") as tar:
        at = tar.getmember("k004.png").offset  # k004's header block
    raw = bytearray((tmp_path / "train-0.tar").read_bytes())
    raw[at:at + 512] = b"\xff" * 512
    (tmp_path / "train-0.tar").write_bytes(bytes(raw))
    index = ShardIndex.load(tmp_path)
    stream = _train(index, "skip", shuffle="stream")
    list(stream.epoch(0))
    assert stream.bad_samples >= 2  # k004 and k005 at least (k003 may be mid-group)
    exact = _train(index, "skip")
    list(exact.epoch(0))
    assert exact.bad_samples == 0  # the header is not read by offset; every image is intact
