"""Class-ordered sources mix: every batch is a draw from the whole split.

Sources are built as users have them: an image-folder tree, VTAB list files and FGVC JSON
files, all listing scikit-learn's digits class by class, spanning many shards. The reference
is computed here, independently: a numpy permutation of the same labels.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from spt_dist.cli import main as spt
from spt_dist.config.schema import DataConfig
from spt_dist.data import DataError, ShardIndex, TrainData, write_shards
from spt_dist.data.mixing import expected_distinct
from spt_dist.data.sources import folder_source

MEAN, STD = [0.5] * 3, [0.25] * 3
BATCH = 32


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory):
    """root/<digit>/<n>.png for all 1,797 digits; list files and JSON in class order."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    order = np.argsort(d.target, kind="stable")  # class by class, like real list files
    lines, mapping = [], {}
    for n in order:
        rel = f"{d.target[n]}/{n:04d}.png"
        (root / "tree" / rel).parent.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(d.images[n] * 16, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "tree" / rel)
        lines.append(f"{rel} {d.target[n]}")
        mapping[rel] = int(d.target[n])
    (root / "vtab").mkdir()
    (root / "vtab" / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "fgvc").mkdir()
    (root / "fgvc" / "train.json").write_text(json.dumps(mapping))
    return root


def _uniform_reference(labels, batch, seed=0, epochs=20):
    """Mean distinct classes per batch under a plain numpy permutation of the labels."""
    rng, labels, got = np.random.default_rng(seed), np.asarray(labels), []
    for _ in range(epochs):
        perm = labels[rng.permutation(len(labels))]
        got += [len(set(perm[i:i + batch])) for i in range(0, len(perm) - batch + 1, batch)]
    return float(np.mean(got))


def _distinct_per_batch(index, world, workers, shuffle="exact", split="train"):
    labels = index.split(split).labels()
    per_batch = []
    for rank in range(world):
        cfg = DataConfig(train_split=split, batch_size=BATCH, num_workers=workers, shuffle=shuffle)
        data = TrainData(cfg, index, 8, MEAN, STD, rank, world, seed=0)
        per_batch += [len({labels[k] for k in keys}) for _, _, keys in data.epoch(0)]
    return float(np.mean(per_batch))


@pytest.fixture(scope="module")
def built(digits_tree, tmp_path_factory):
    """The three writers on the class-ordered sources, 50 samples per shard."""
    out = tmp_path_factory.mktemp("built")
    args = ["--shard-size", "50", "--no-progress", "--workers", "1"]
    assert spt(["shards", "build", "folder", str(digits_tree / "tree"), "--out", str(out / "folder"),
                "--val-fraction", "0.1", "--test-fraction", "0.1", *args]) == 0
    assert spt(["shards", "build", "vtab", str(digits_tree / "vtab"), "--image-root", str(digits_tree / "tree"),
                "--out", str(out / "vtab"), *args]) == 0
    assert spt(["shards", "build", "fgvc", str(digits_tree / "fgvc"), "--image-root", str(digits_tree / "tree"),
                "--out", str(out / "fgvc"), *args]) == 0
    return {k: ShardIndex.load(out / k) for k in ("folder", "vtab", "fgvc")}


@pytest.mark.parametrize("writer", ["folder", "vtab", "fgvc"])
@pytest.mark.parametrize("world, workers", [(1, 0), (1, 2), (2, 0), (2, 2)])
def test_batches_mix_like_a_uniform_permutation(built, writer, world, workers):
    index = built[writer]
    split = index.split("train")
    assert len(split.shards) >= 25  # many shards
    reference = _uniform_reference(list(split.labels().values()), BATCH)
    assert _distinct_per_batch(index, world, workers) == pytest.approx(reference, rel=0.05)


def test_writer_permutes_every_split_and_records_its_seed(built):
    index = built["folder"]
    for split in index.splits.values():
        # Class-ordered input, yet every shard holds (nearly) every class.
        assert min(len(s.class_counts()) for s in split.shards) >= 8
    assert index.source["shuffle_seed"] == 0
    raw = json.loads((index.root / "index.json").read_text())
    first = raw["splits"]["train"]["shards"][0]
    assert sum(first["class_counts"].values()) == first["num_samples"]


def test_same_source_and_seed_same_bytes(digits_tree, tmp_path):
    src = folder_source(str(digits_tree / "tree"), 0.1, 0.1)
    a = write_shards(src, str(tmp_path / "a"), shard_size=200, progress=False, seed=3)
    b = write_shards(folder_source(str(digits_tree / "tree"), 0.1, 0.1), str(tmp_path / "b"), shard_size=200,
                     workers=2, progress=False, seed=3)
    c = write_shards(folder_source(str(digits_tree / "tree"), 0.1, 0.1), str(tmp_path / "c"), shard_size=200,
                     progress=False, seed=4)
    assert [s.sha256 for s in a.split("train").shards] == [s.sha256 for s in b.split("train").shards]
    assert [s.sha256 for s in a.split("train").shards] != [s.sha256 for s in c.split("train").shards]


@pytest.fixture(scope="module")
def class_pure(digits_tree, tmp_path_factory):
    """Shards as foreign tools write them: the source order kept, one class or two per shard."""
    out = tmp_path_factory.mktemp("pure")
    return write_shards(folder_source(str(digits_tree / "tree"), 0.0, 0.0), str(out), shard_size=50,
                        progress=False, shuffle=False)


def test_exact_shuffle_mixes_class_pure_shards(class_pure):
    split = class_pure.split("train")
    assert max(len(s.class_counts()) for s in split.shards) <= 2
    reference = _uniform_reference(list(split.labels().values()), BATCH)
    assert _distinct_per_batch(class_pure, 2, 0) == pytest.approx(reference, rel=0.05)


def test_stream_mode_on_class_pure_shards_is_refused_before_training(class_pure):
    cfg = DataConfig(batch_size=BATCH, shuffle="stream", shuffle_buffer=100)
    with pytest.raises(DataError, match=r"ratio 0\.\d+ < data.min_mixing=0.9.*data.shuffle=exact"):
        TrainData(cfg, class_pure, 8, MEAN, STD, 0, 2, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = TrainData(DataConfig(batch_size=BATCH, shuffle="stream", shuffle_buffer=100, mixing_check="warn"),
                         class_pure, 8, MEAN, STD, 0, 2, seed=0)
    assert data.mixing.ratio < 0.75 and any("ordered by class" in str(w.message) for w in caught)
    # What the check predicted from the index is what the reader then does.
    labels = class_pure.split("train").labels()
    seen = [len({labels[k] for k in keys}) for _, _, keys in data.epoch(0)]
    assert np.mean(seen) == pytest.approx(data.mixing.planned, rel=0.1)
    exact = TrainData(DataConfig(batch_size=BATCH), class_pure, 8, MEAN, STD, 0, 2, seed=0)
    assert exact.mixing.ratio == pytest.approx(1.0, abs=0.05)


def test_a_short_plan_on_class_pure_shards_is_warned_about_not_passed_silently(class_pure):
    """Fewer than 16 planned batches are too few to stop a run on; a low ratio is still said."""
    batch = len(class_pure.split("train").labels()) // 8  # 8 batches
    cfg = DataConfig(batch_size=batch, shuffle="stream", shuffle_buffer=1, stream_shards=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = TrainData(cfg, class_pure, 8, MEAN, STD, 0, 1, seed=0)
    said = [str(w.message) for w in caught if "ordered by class" in str(w.message)]
    assert data.mixing.batches == 8 and data.mixing.ratio < 0.9
    assert len(said) == 1 and "only 8 planned batches, fewer than the 16 a run is stopped on" in said[0]


def test_stream_reads_several_shards_at_once(class_pure):
    """`data.stream_shards=k` interleaves k shards per worker: on class-pure shards a batch then
    spans more shards' classes than when shards are read one at a time, as the check plans."""
    labels = class_pure.split("train").labels()
    seen = {}
    for k in (1, 4):
        cfg = DataConfig(batch_size=BATCH, shuffle="stream", shuffle_buffer=BATCH, stream_shards=k,
                         mixing_check="ignore")
        data = TrainData(cfg, class_pure, 8, MEAN, STD, 0, 1, seed=0)
        seen[k] = float(np.mean([len({labels[key] for key in keys}) for _, _, keys in data.epoch(0)]))
        assert seen[k] == pytest.approx(data.mixing.planned, rel=0.1)
    assert seen[4] > 1.25 * seen[1]  # measured 3.6 -> 4.7 (a uniform shuffle: 9.7)


def test_expected_distinct_matches_simulation():
    counts = [300, 30, 3, 1, 170]
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    assert expected_distinct(counts, 16) == pytest.approx(_uniform_reference(labels, 16, epochs=400), rel=0.01)


@pytest.mark.parametrize("world, workers", [(1, 0), (2, 2)])
def test_each_epoch_is_a_permutation_of_the_split(class_pure, world, workers):
    keys = set(class_pure.split("train").keys())
    n, g = len(keys), world * BATCH
    epochs = []
    for epoch in range(3):
        seen = []
        for rank in range(world):
            data = TrainData(DataConfig(batch_size=BATCH, num_workers=workers), class_pure, 8, MEAN, STD,
                             rank, world, seed=5)
            seen += [k for _, _, ks in data.epoch(epoch) for k in ks]
        assert len(seen) == len(set(seen)) == (n // g) * g and set(seen) <= keys  # once each; remainder dropped
        epochs.append(seen)
    assert epochs[0] != epochs[1] != epochs[2]
    again = TrainData(DataConfig(batch_size=BATCH, num_workers=workers), class_pure, 8, MEAN, STD, 0, world, seed=5)
    assert [k for _, _, ks in again.epoch(1) for k in ks] == epochs[1][:len(epochs[1]) // world]
    # Dropped samples differ from epoch to epoch: over many epochs every sample is trained.
    dropped = [keys - set(e) for e in epochs]
    assert dropped[0] != dropped[1]


def test_exact_order_does_not_depend_on_shard_layout(digits_tree, class_pure, tmp_path):
    other = write_shards(folder_source(str(digits_tree / "tree"), 0.0, 0.0), str(tmp_path / "o"), shard_size=333,
                         progress=False, seed=9)
    cfg = DataConfig(batch_size=BATCH)
    a = [ks for _, _, ks in TrainData(cfg, class_pure, 8, MEAN, STD, 1, 2, seed=0).epoch(2)]
    b = [ks for _, _, ks in TrainData(cfg, other, 8, MEAN, STD, 1, 2, seed=0).epoch(2)]
    assert a == b


def test_shards_info_reports_classes_per_shard(class_pure, capsys):
    assert spt(["shards", "info", str(class_pure.root)]) == 0
    out = capsys.readouterr().out
    assert "train: 1797 samples in 36 shard(s), 10 classes; classes per shard: 1..2" in out


def test_spt_train_refuses_unmixed_stream_before_any_step(digits_tree, tmp_path, capsys):
    """Through the command: exit 2, one `spt: error:` line naming the fix, before the run folder is
    made; `spt submit` refuses it on the login node."""
    from engine_helpers import make_assets, write_config

    shards = write_shards(folder_source(str(digits_tree / "tree"), 0.1, 0.1), str(tmp_path / "pure"), shard_size=50,
                          progress=False, shuffle=False)
    assets = make_assets(tmp_path / "assets")
    config = write_config(tmp_path / "cfg.yaml", {**assets, "shards": shards.root}, tmp_path / "runs", epochs=1)
    args = ["train", str(config), "run.name=pure", "data.shuffle=stream"]
    assert spt(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("spt: error: ") and err.count("\n") == 1 and "data.shuffle=exact" in err, err
    # refused before the run folder is claimed: the fix it names, tried under the same run.name,
    # is not then refused as another config
    assert not (tmp_path / "runs" / "pure").exists()
    # and on the login node, before a job is queued
    from spt_dist.config import ConfigError
    from spt_dist.study.submit import prepare

    with pytest.raises(ConfigError, match="ratio 0\\.\\d+ < data.min_mixing=0.9"):
        prepare(str(config), ["run.name=pure", "data.shuffle=stream", "launch.cluster=local"])
    assert not (tmp_path / "runs" / "pure").exists()
