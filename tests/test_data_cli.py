"""`spt shards info`: the class names of a shard folder with each split's samples per class, from
shards built from class-ordered image folders; the counts are checked against the files on disk."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from spt_dist.cli import main as spt
from spt_dist.data import write_shards
from spt_dist.data.sources import fmnist_source, folder_source
from spt_dist.data.synthetic import tiny_image, write_image_tree

SPLITS = ("train", "val", "test")


def _on_disk(tree: Path) -> Dict[str, Dict[str, int]]:
    """split -> class folder -> images in it: the independent count."""
    return {s: {c.name: len(list(c.iterdir())) for c in sorted((tree / s).iterdir())} for s in SPLITS}


def _table(out: str) -> List[list]:
    """The class table's rows after its header: [label, name, {split: count}] (a name may hold
    spaces), or the words of the row that stands for left-out classes."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:2] == ["label", "class"])
    splits = lines[start].split()[2:]
    rows = []
    for line in lines[start + 1:]:
        parts = line.split()
        rows.append(parts if parts[0] == "..." else
                    [parts[0], " ".join(parts[1:-len(splits)]), dict(zip(splits, map(int, parts[-len(splits):])))])
    return rows


@pytest.fixture(scope="module")
def fmnist_shards(tmp_path_factory):
    """Fashion-MNIST classes 5-9 as root/<split>/<class>/<image> folders, class by class, with a
    different number of training images per class (class i loses i of its 6), then shards."""
    root = tmp_path_factory.mktemp("fmnist_tree")
    tree = write_image_tree(fmnist_source(classes=[5, 6, 7, 8, 9], val_fraction=0.1), root / "tree",
                            {"train": 6, "val": 2, "test": 3})
    for i, folder in enumerate(sorted((tree / "train").iterdir())):
        for image in sorted(folder.iterdir())[:i]:
            image.unlink()
    index = write_shards(folder_source(str(tree)), str(root / "shards"), shard_size=4, progress=False)
    return tree, index


def test_shards_info_lists_the_class_names_with_counts_per_split(fmnist_shards, capsys):
    tree, index = fmnist_shards
    disk = _on_disk(tree)
    names = sorted(disk["train"])
    assert names == ["ankle-boot", "bag", "sandal", "shirt", "sneaker"]  # folder names, sorted: labels 0-4
    assert spt(["shards", "info", str(index.root)]) == 0
    out = capsys.readouterr().out
    assert "train: 20 samples in 5 shard(s), 5 classes" in out  # 6 + 5 + 4 + 3 + 2
    assert _table(out) == [[str(c), name, {s: disk[s][name] for s in SPLITS}] for c, name in enumerate(names)]
    assert [r[2]["train"] for r in _table(out)] == [6, 5, 4, 3, 2]


def test_shards_info_json_is_complete(fmnist_shards, capsys):
    tree, index = fmnist_shards
    disk = _on_disk(tree)
    assert spt(["shards", "info", str(index.root), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["classes"] == sorted(disk["train"]) and record["content_hash"] == index.content_hash
    for s in SPLITS:
        assert record["splits"][s]["class_counts"] == [disk[s][name] for name in record["classes"]]
        assert record["splits"][s]["num_samples"] == sum(disk[s].values())
        assert len(record["splits"][s]["classes_per_shard"]) == record["splits"][s]["shards"]


def test_shards_info_is_compact_for_many_classes(tmp_path, capsys):
    """25 classes (class c with c % 3 + 1 images, one split folder each): the first and last five
    rows and the count of the rest; --json keeps all 25."""
    rng = np.random.default_rng(0)
    names = [f"species {c:02d}" for c in range(25)]
    for c, name in enumerate(names):
        for i in range(c % 3 + 1):
            (tmp_path / "tree" / "train" / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "tree" / "train" / name / f"{i}.png").write_bytes(tiny_image(c, 25, 8, rng))
    index = write_shards(folder_source(str(tmp_path / "tree")), str(tmp_path / "shards"), shard_size=16,
                         progress=False)
    assert spt(["shards", "info", str(index.root)]) == 0
    rows = _table(capsys.readouterr().out)
    expected = [[str(c), names[c], {"train": c % 3 + 1}] for c in range(25)]
    assert rows == expected[:5] + [["...", "15", "more", "classes", "(--json", "lists", "every", "one)"]] + expected[-5:]
    assert spt(["shards", "info", str(index.root), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["classes"] == names and record["splits"]["train"]["class_counts"] == [c % 3 + 1 for c in range(25)]
