"""Shard writers on tiny real data: folder tree, VTAB lists, FGVC JSON, digits, Fashion-MNIST."""
from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

from spt_dist.cli import main as spt
from spt_dist.config.schema import DataConfig
from spt_dist.data import DataError, EvalData, ShardIndex, write_shards
from spt_dist.data.index import self_hash
from spt_dist.data.sources import digits_source, fmnist_source, folder_source
from spt_dist.data.sources.builtin import FMNIST_DIR


def _jpeg(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path, format="JPEG")


def _tree(root: Path, classes=("cat", "dog"), per_class=5) -> None:
    for c, name in enumerate(classes):
        for i in range(per_class):
            _jpeg(root / name / f"{i}.jpg", 50 + 100 * c)


def _read_all(index: ShardIndex, split: str):
    data = EvalData(DataConfig(preset="small"), index, split, 6, [0.5] * 3, [0.5] * 3, 0, 1)
    return [(k, int(y)) for _, labels, keys in data for k, y in zip(keys, labels)]


def test_folder_tree_deterministic_split(tmp_path):
    _tree(tmp_path / "src", per_class=10)
    index = write_shards(folder_source(str(tmp_path / "src"), 0.2, 0.1), str(tmp_path / "out"),
                         shard_size=4, workers=2, progress=False)
    assert index.classes == ["cat", "dog"]
    assert {s: index.split(s).num_samples for s in index.splits} == {"train": 14, "val": 4, "test": 2}
    again = write_shards(folder_source(str(tmp_path / "src"), 0.2, 0.1), str(tmp_path / "again"),
                         shard_size=4, workers=1, progress=False)
    assert again.content_hash == index.content_hash  # independent of worker count and run
    loaded = ShardIndex.load(tmp_path / "out")
    assert loaded.content_hash == index.content_hash and loaded.split("train").keys() == index.split("train").keys()
    assert sorted(y for _, y in _read_all(loaded, "test")) == [0, 1]
    assert not list((tmp_path / "out").glob(".*tmp*"))  # atomic writes leave no temporaries
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        names = tar.getnames()
    first = index.split("train").shards[0].keys[0]
    assert names[:2] == [f"{first}.jpg", f"{first}.cls"]  # <key>.jpg then <key>.cls, in index order
    # Keys name source positions (class by class); the split was permuted before sharding.
    assert index.split("train").keys() != sorted(index.split("train").keys())
    assert index.source["shuffle_seed"] == 0


def _noise_tree(root: Path, per_class: int) -> Dict[str, str]:
    """Class folders of distinct noise JPEGs; sha256 of each file's bytes -> its path."""
    rng, files = np.random.default_rng(0), {}
    for name in ("cat", "dog", "eel"):
        for i in range(per_class):
            path = root / name / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path, format="JPEG")
            files[hashlib.sha256(path.read_bytes()).hexdigest()] = str(path.relative_to(root))
    return files


def _members(out: Path, files: Dict[str, str]) -> Dict[str, List[str]]:
    """split -> source file of every image in its tars, in shard order, read from the tars alone."""
    found: Dict[str, List[str]] = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                if m.name.endswith(".jpg"):
                    digest = hashlib.sha256(tar.extractfile(m).read()).hexdigest()
                    found.setdefault(tar_path.name.split("-")[0], []).append(files[digest])
    return found


def test_a_reshuffle_keeps_every_split_and_its_keys(tmp_path):
    files = _noise_tree(tmp_path / "src", per_class=10)
    assert len(files) == 30  # distinct images: each names its file

    def build(name: str, *options: str) -> Path:
        assert spt(["shards", "build", "folder", str(tmp_path / "src"), "--out", str(tmp_path / name), "--val-fraction",
                    "0.2", "--test-fraction", "0.2", "--shard-size", "4", "--workers", "1", "--max-per-class", "5",
                    "--no-progress", *options]) == 0
        return tmp_path / name

    a, b = _members(build("a"), files), _members(build("b", "--seed", "1"), files)
    assert {s: sorted(v) for s, v in a.items()} == {s: sorted(v) for s, v in b.items()}  # the same files per split
    assert all(len(set(v)) == len(v) for v in a.values()) and sum(map(len, a.values())) == 6 + 6 + 5 * 3
    assert a["train"] != b["train"]  # shard order: the permutation is --seed's
    ia, ib = ShardIndex.load(tmp_path / "a"), ShardIndex.load(tmp_path / "b")
    assert all(sorted(ia.split(s).keys()) == sorted(ib.split(s).keys()) for s in ia.splits)  # keys too
    assert ia.content_hash != ib.content_hash  # other tars
    assert (ia.source["split_seed"], ia.source["shuffle_seed"], ib.source["split_seed"], ib.source["shuffle_seed"]) \
        == (0, 0, 0, 1)
    c = _members(build("c", "--split-seed", "1"), files)
    assert sorted(c["test"]) != sorted(a["test"])  # the membership is --split-seed's
    assert ShardIndex.load(tmp_path / "c").source["split_seed"] == 1


def test_an_index_written_before_split_seeds_loads(tmp_path, capsys):
    _tree(tmp_path / "src")
    write_shards(folder_source(str(tmp_path / "src")), str(tmp_path / "out"), progress=False)
    path = tmp_path / "out" / "index.json"
    raw = json.loads(path.read_text())
    del raw["source"]["split_seed"]
    raw["source"]["seed"] = 0  # what the sources recorded then
    raw["index_hash"] = self_hash(raw)
    path.write_text(json.dumps(raw))
    assert "split_seed" not in ShardIndex.load(tmp_path / "out").source
    assert spt(["shards", "info", str(tmp_path / "out")]) == 0 and "folder, 2 classes" in capsys.readouterr().out


def test_a_source_and_caps_on_other_split_seeds_are_refused(tmp_path):
    _tree(tmp_path / "src")
    with pytest.raises(DataError, match="split seed 1 but the shards were asked for split seed 2"):
        write_shards(folder_source(str(tmp_path / "src"), split_seed=1), str(tmp_path / "out"), split_seed=2,
                     progress=False)


def test_folder_tree_with_split_folders_and_bad_image(tmp_path):
    src = tmp_path / "src"
    _tree(src / "train")
    _tree(src / "val", per_class=2)
    (src / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        write_shards(folder_source(str(src)), str(tmp_path / "out"), progress=False)
    logged = []
    index = write_shards(folder_source(str(src)), str(tmp_path / "out"), skip_bad=True, progress=False,
                         log=logged.append)
    assert {s: index.split(s).num_samples for s in index.splits} == {"train": 10, "val": 4}
    assert len(logged) == 1 and "broken.jpg" in logged[0]


def test_vtab_lists_cli(tmp_path):
    src = tmp_path / "caltech101"
    for i in range(6):
        _jpeg(src / "images" / f"{i}.jpg", 30 * i)
    (src / "train800.txt").write_text("images/0.jpg 0\nimages/1.jpg 1\nimages/2.jpg 2\n")
    (src / "val200.txt").write_text("images/3.jpg 1\n")
    (src / "train800val200.txt").write_text("images/0.jpg 0\nimages/1.jpg 1\nimages/2.jpg 2\nimages/3.jpg 1\n")
    (src / "test.txt").write_text("images/4.jpg 0\nimages/5.jpg 2\n")
    assert spt(["shards", "build", "vtab", str(src), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    index = ShardIndex.load(tmp_path / "out")
    assert sorted(index.splits) == ["test", "train800", "train800val200", "val200"]
    assert index.classes == ["0", "1", "2"] and index.source["kind"] == "vtab"
    assert sorted(_read_all(index, "train800val200")) == [(f"train800val200-000000{i}", y)
                                                          for i, y in enumerate([0, 1, 2, 1])]
    (src / "test.txt").write_text("images/missing.jpg 0\n")
    assert spt(["shards", "build", "vtab", str(src), "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_fgvc_json(tmp_path):
    src = tmp_path / "CUB"
    for i in range(5):
        _jpeg(src / "images" / f"00{i % 2 + 1}.bird" / f"{i}.jpg", 40 * i)
    names = [f"00{i % 2 + 1}.bird/{i}.jpg" for i in range(5)]
    # VPT's files use the dataset's own ids (1-based here); they become 0..C-1.
    (src / "train.json").write_text(json.dumps({n: i % 2 + 1 for i, n in enumerate(names[:3])}))
    (src / "val.json").write_text(json.dumps({names[3]: 2}))
    (src / "test.json").write_text(json.dumps({names[4]: 1}))
    assert spt(["shards", "build", "fgvc", str(src), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    index = ShardIndex.load(tmp_path / "out")
    assert index.classes == ["1", "2"] and sorted(index.splits) == ["test", "train", "val"]
    assert sorted(_read_all(index, "train")) == [(f"train-000000{i}", y) for i, y in enumerate([0, 1, 0])]
    assert _read_all(index, "val")[0][1] == 1


def test_digits_class_subset(tmp_path):
    index = write_shards(digits_source(classes=[3, 5], val_fraction=0.1, test_fraction=0.2),
                         str(tmp_path / "d"), shard_size=100, max_per_class=20, progress=False)
    assert index.classes == ["3", "5"]
    assert [index.split(s).num_samples for s in ("train", "val", "test")] == [40, 36, 40]  # val: 10% of ~180 per class
    images = next(iter(EvalData(DataConfig(), index, "test", 8, [0.5] * 3, [0.5] * 3, 0, 1)))[0]
    assert images.shape[1:] == (3, 8, 8) and images.std() > 0.1  # real strokes, not blank


@pytest.mark.skipif(not Path(FMNIST_DIR).is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_fmnist_class_subset_cli(tmp_path):
    out = tmp_path / "fm"
    assert spt(["shards", "build", "fmnist", "--classes", "5,6,7,8,9", "--max-per-class", "6", "--out", str(out),
                "--no-progress", "--workers", "2", "--shard-size", "8"]) == 0
    index = ShardIndex.load(out)
    assert index.classes == ["sandal", "shirt", "sneaker", "bag", "ankle-boot"]
    assert [index.split(s).num_samples for s in ("train", "val", "test")] == [30, 30, 30]
    train, val = set(index.split("train").keys()), set(index.split("val").keys())
    assert not train & val and sorted({y for _, y in _read_all(index, "test")}) == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="--classes: 10 is not allowed"):
        fmnist_source(classes=[10])


def test_folder_class_named_like_a_split_is_a_class(tmp_path):
    # `test` here is a class (images directly inside), not a split folder.
    _tree(tmp_path / "src", classes=("cat", "dog", "test"), per_class=10)
    index = write_shards(folder_source(str(tmp_path / "src"), 0.2, 0.1), str(tmp_path / "out"), progress=False)
    assert index.classes == ["cat", "dog", "test"]
    assert {s: index.split(s).num_samples for s in index.splits} == {"train": 21, "val": 6, "test": 3}


def test_folder_split_folders_mixed_with_classes_is_an_error(tmp_path):
    src = tmp_path / "src"
    _tree(src / "train")
    _tree(src, classes=("bird",))
    with pytest.raises(DataError, match=r"mixes split folders .*\(train\) with other top-level folders \(bird\)"):
        folder_source(str(src))
    assert spt(["shards", "build", "folder", str(src), "--out", str(tmp_path / "out"), "--no-progress"]) == 2


def test_folder_skips_dot_files(tmp_path):
    src = tmp_path / "src"
    _tree(src, per_class=4)
    (src / "cat" / "._0.jpg").write_bytes(b"\x00\x05\x16\x07 resource fork")  # macOS AppleDouble
    (src / "dog" / ".hidden.png").write_bytes(b"not a png")
    _jpeg(src / "dog" / ".thumbs" / "t.jpg", 0)
    source = folder_source(str(src), 0.0, 0.0)
    assert sorted(Path(s.path).name for s in source.splits["train"]) == sorted([f"{i}.jpg" for i in range(4)] * 2)
    index = write_shards(source, str(tmp_path / "out"), progress=False)  # no bad image to stop the build
    assert index.split("train").num_samples == 8 and index.source["skipped"] == 0


@pytest.mark.parametrize("val, test, option", [
    (-0.1, 0.1, "--val-fraction"), (0.1, 1.0, "--test-fraction"), (0.6, 0.5, "sum must be below 1"),
    (float("nan"), 0.1, "--val-fraction")])
def test_split_fractions_out_of_range(tmp_path, val, test, option):
    _tree(tmp_path / "src")
    with pytest.raises(DataError, match=option):
        folder_source(str(tmp_path / "src"), val, test)
    with pytest.raises(DataError, match=option):
        digits_source(val_fraction=val, test_fraction=test)
    args = ["shards", "build", "folder", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--no-progress",
            "--val-fraction", str(val), "--test-fraction", str(test)]
    assert spt(args) == 2 and not (tmp_path / "out").exists()


def test_failed_rebuild_leaves_no_index(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    _tree(src, per_class=4)
    write_shards(folder_source(str(src), 0.0, 0.0), str(out), shard_size=2, progress=False)
    for i in range(4):
        _jpeg(src / "cat" / f"{i}.jpg", 7)  # other pixels: the first tar changes
    (src / "dog" / "3.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # fails in the last shard
    before = (out / "train-000000.tar").read_bytes()
    with pytest.raises(DataError, match="3.jpg"):
        write_shards(folder_source(str(src), 0.0, 0.0), str(out), shard_size=2, workers=1, progress=False)
    assert (out / "train-000000.tar").read_bytes() != before  # new tars are in place...
    with pytest.raises(DataError, match="index not found"):  # ...and no old index claims them
        ShardIndex.load(out)
