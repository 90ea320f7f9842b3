"""`spt shards index` for tars the project did not write, index upgrades, `spt shards verify`."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds

from spt_dist.cli import main as spt
from spt_dist.config.schema import DataConfig
from spt_dist.data import ShardIndex, TrainData
from spt_dist.data.reader import SampleReader

MEAN, STD = [0.5] * 3, [0.25] * 3


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "digits"
    assert spt(["shards", "build", "digits", "--classes", "0,1,2,3", "--shard-size", "60", "--out", str(out),
                "--no-progress", "--workers", "1"]) == 0
    return ShardIndex.load(out)


def _rewrite_with_webdataset(index: ShardIndex, out: Path) -> None:
    """The same samples, written by webdataset's own TarWriter (its own tar metadata)."""
    out.mkdir(parents=True, exist_ok=True)
    reader = SampleReader(index)
    for split in index.splits.values():
        for shard in split.shards:
            with wds.TarWriter(str(out / shard.name)) as sink:
                for j, key in enumerate(shard.keys):
                    raw = reader.read(shard, j)
                    sink.write({"__key__": key, shard.exts[j]: raw.fields[shard.exts[j]], "cls": raw.fields["cls"]})
    (out / "classes.txt").write_text("\n".join(index.classes) + "\n")


@pytest.fixture(scope="module")
def foreign(built, tmp_path_factory):
    root = tmp_path_factory.mktemp("foreign")
    _rewrite_with_webdataset(built, root)
    assert spt(["shards", "index", str(root), "--classes", str(root / "classes.txt")]) == 0
    return ShardIndex.load(root)


def test_foreign_tars_index_like_built_ones(built, foreign):
    assert foreign.classes == built.classes and sorted(foreign.splits) == sorted(built.splits)
    for name, split in built.splits.items():
        other = foreign.split(name)
        assert [s.name for s in other.shards] == [s.name for s in split.shards]
        for a, b in zip(split.shards, other.shards):
            assert (a.keys, a.labels, a.digests, a.exts) == (b.keys, b.labels, b.digests, b.exts)
            assert a.sha256 != b.sha256  # other tar bytes (TarWriter's metadata), same samples
    assert foreign.content_hash != built.content_hash


@pytest.mark.parametrize("shuffle", ["exact", "stream"])
def test_foreign_tars_train_identically(built, foreign, shuffle):
    cfg = DataConfig(batch_size=16, shuffle=shuffle, shuffle_buffer=20, preset="fgvc", num_workers=2)
    a = list(TrainData(cfg, built, 8, MEAN, STD, 0, 1, seed=1).epoch(1))
    b = list(TrainData(cfg, foreign, 8, MEAN, STD, 0, 1, seed=1).epoch(1))
    assert [x[2] for x in a] == [x[2] for x in b]
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def test_foreign_tars_give_the_same_run(built, foreign, tmp_path):
    """The engine on both folders: the same trained tensors, bit for bit."""
    from safetensors.torch import load_file

    from engine_helpers import make_assets
    from spt_dist.config import load_config
    from spt_dist.engine.train import train

    backbone = make_assets(tmp_path / "assets")["backbone"]
    packs = []
    for name, index in (("built", built), ("foreign", foreign)):
        cfg = load_config(None, ["model.name=vit_micro_p4_16", f"model.checkpoint={backbone}", "method.name=vpt",
                                 "method.init=vpt", "method.prompt_length=2", "method.track_alignment=false",
                                 f"data.root={index.root}", "data.batch_size=16", "optim.epochs=2",
                                 "optim.warmup_epochs=0", "run.progress=false", f"run.out_dir={tmp_path}",
                                 f"run.name={name}"])
        assert train(cfg)["status"] == "finished"
        packs.append(load_file(str(tmp_path / name / "prompt_pack.safetensors")))
    assert packs[0].keys() == packs[1].keys()
    assert all(torch.equal(packs[0][k], packs[1][k]) for k in packs[0])


def _old_format(root: Path) -> None:
    """index.json as the previous version wrote it: no offsets, digests, class counts or index hash."""
    raw = json.loads((root / "index.json").read_text())
    raw["format"] = 1
    raw.pop("index_hash")
    raw["classes"] = [f"digit {c}" for c in raw["classes"]]
    for sp in raw["splits"].values():
        sp.pop("class_counts")
        for s in sp["shards"]:
            for k in ("exts", "offsets", "digests", "class_counts"):
                s.pop(k)
    (root / "index.json").write_text(json.dumps(raw))


def test_old_index_is_upgraded_keeping_names_and_splits(built, tmp_path, capsys):
    root = tmp_path / "old"
    _rewrite_with_webdataset(built, root)
    (root / "index.json").write_text((built.root / "index.json").read_text())
    (root / "train-000000.tar").rename(root / "extra-7.tar")  # a shard whose name names no split
    raw = json.loads((root / "index.json").read_text())
    raw["splits"]["train"]["shards"][0]["name"] = "extra-7.tar"
    (root / "index.json").write_text(json.dumps(raw))
    _old_format(root)
    assert spt(["shards", "info", str(root)]) == 2
    assert "index format 1 is not supported" in capsys.readouterr().err
    assert spt(["shards", "index", str(root)]) == 0
    index = ShardIndex.load(root)
    assert index.classes == [f"digit {c}" for c in range(4)]  # the old index's class names
    assert "extra-7.tar" in [s.name for s in index.split("train").shards]  # and its split assignment
    assert index.split("train").num_samples == built.split("train").num_samples


def test_split_patterns_and_inferred_classes(built, tmp_path):
    root = tmp_path / "p"
    _rewrite_with_webdataset(built, root)
    assert spt(["shards", "index", str(root), "--split", "dev=val-*.tar", "holdout=test-*"]) == 0
    index = ShardIndex.load(root)
    assert sorted(index.splits) == ["dev", "holdout", "train"] and index.classes == ["0", "1", "2", "3"]
    assert spt(["shards", "index", str(root), "--split", "a=*.tar", "b=train*"]) == 2
    assert spt(["shards", "index", str(root), "--split", "dev=val-*.tar", "holdout=tset-*"]) == 2  # a typo
    assert sorted(ShardIndex.load(root).splits) == ["dev", "holdout", "train"]  # the index is left as it was


def test_splits_from_file_names():
    from spt_dist.data.indexer import split_of_name

    names = {"train-000012.tar": "train", "val_3.tar": "val", "test.tar": "test", "imagenet-val-0001.tar": "imagenet-val",
             "000012.tar": "train", "7.tar": "train"}  # a bare number: webdataset's `%06d` naming, one split
    assert {n: split_of_name(n) for n in names} == names


def test_samples_without_label_are_named_or_skipped(tmp_path, capsys):
    root = tmp_path / "nolabel"
    root.mkdir()
    with wds.TarWriter(str(root / "train-0.tar")) as sink:
        sink.write({"__key__": "a", "png": b"\x89PNG fake", "cls": b"0"})
        sink.write({"__key__": "b", "png": b"\x89PNG fake"})
        sink.write({"__key__": "c", "png": b"\x89PNG fake", "cls": b"one"})
    assert spt(["shards", "index", str(root)]) == 2
    assert "sample 'b': no label (.cls)" in capsys.readouterr().err
    assert spt(["shards", "index", str(root), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped: train-0.tar: sample 'b': no label" in out and "sample 'c': label b'one'" in out
    assert ShardIndex.load(root).split("train").keys() == ["a"]
    (root / "notes.tar").write_bytes(b"this is not a tar")
    assert spt(["shards", "index", str(root)]) == 2


def test_verify_finds_changed_bytes_and_labels(built, tmp_path, capsys):
    root = tmp_path / "v"
    _rewrite_with_webdataset(built, root)
    assert spt(["shards", "index", str(root)]) == 0
    assert spt(["shards", "verify", str(root)]) == 0
    index = ShardIndex.load(root)
    shard = index.split("train").shards[1]
    path = root / shard.name
    with tarfile.open(path) as tar:
        cls_at = tar.getmember(f"{shard.keys[3]}.cls").offset_data
        img_at = tar.getmember(f"{shard.keys[5]}.{shard.exts[5]}").offset_data
    raw = bytearray(path.read_bytes())
    raw[cls_at:cls_at + 1] = b"3" if raw[cls_at:cls_at + 1] != b"3" else b"2"  # a wrong but valid label
    raw[img_at + 40:img_at + 48] = b"\0" * 8
    path.write_bytes(bytes(raw))
    capsys.readouterr()
    assert spt(["shards", "verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"{shard.name}: sha256 differs" in out
    assert f"{shard.name}: labels differ from index.json from sample 3 on (key '{shard.keys[3]}')" in out
    assert f"{shard.name}: digests differ from index.json from sample 5 on (key '{shard.keys[5]}')" in out
