"""ShardIndex.load refuses malformed indices and shards changed after the index was written."""
from __future__ import annotations

import json

import pytest

from spt_dist.cli import main as spt
from spt_dist.data import DataError, ShardIndex
from spt_dist.data.index import self_hash
from spt_dist.data.synthetic import tiny_shards


@pytest.fixture
def shards(tmp_path):
    tiny_shards(tmp_path, {"train": [3, 2]}, num_classes=2)
    return tmp_path


def _edit(root, change, restamp: bool = True) -> None:
    """Change index.json; `restamp` recomputes its index_hash (a tool that writes a malformed
    index), otherwise it is a hand edit."""
    raw = json.loads((root / "index.json").read_text())
    change(raw)
    if restamp:
        raw["index_hash"] = self_hash(raw)
    (root / "index.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw.pop("splits"), "missing key 'splits'"),
    (lambda raw: raw.pop("classes"), "missing key 'classes'"),
    (lambda raw: raw["splits"]["train"].pop("shards"), "missing key 'splits.train.shards'"),
    (lambda raw: raw["splits"]["train"]["shards"][1].pop("keys"), r"missing key 'splits.train.shards\[1\].keys'"),
    (lambda raw: raw.update(splits=["train"]), "'splits' should be a dict, got list"),
    (lambda raw: raw["splits"]["train"]["shards"][0].update(labels=["x"] * 3), "non-integer label"),
])
def test_malformed_index_names_file_and_key(shards, change, message, capsys):
    _edit(shards, change)
    with pytest.raises(DataError, match=message) as err:
        ShardIndex.load(shards)
    assert str(shards / "index.json") in str(err.value)
    assert spt(["shards", "info", str(shards)]) == 2
    assert message.replace("\\", "") in capsys.readouterr().err  # one line, no traceback


def test_shard_size_checked_on_load(shards):
    index = ShardIndex.load(shards)
    assert [s.size for s in index.split("train").shards] == [(shards / n).stat().st_size
                                                              for n in ("train-000000.tar", "train-000001.tar")]
    tar = shards / "train-000001.tar"
    tar.write_bytes(tar.read_bytes()[:-512])  # a tar replaced or cut after the index was written
    with pytest.raises(DataError, match=r"train-000001\.tar is \d+ bytes but index.json records \d+"):
        ShardIndex.load(shards)
    tar.unlink()
    with pytest.raises(DataError, match=r"shard train-000001\.tar \(split 'train'\) is missing"):
        ShardIndex.load(shards)


def test_hand_edited_index_is_refused(shards, capsys):
    _edit(shards, lambda raw: raw["splits"]["train"]["shards"][0]["labels"].__setitem__(0, 1), restamp=False)
    with pytest.raises(DataError, match="does not match its own index_hash"):
        ShardIndex.load(shards)
    # The way out the message names: re-index from the tars, which hold the true labels.
    assert spt(["shards", "index", str(shards)]) == 0
    assert ShardIndex.load(shards).split("train").shards[0].labels[0] == 0


def test_shard_listed_twice_and_duplicate_keys_are_refused(shards):
    def twice(raw):
        raw["splits"]["val"] = {"shards": [raw["splits"]["train"]["shards"][0]]}
    _edit(shards, twice)
    with pytest.raises(DataError, match=r"shard train-000000\.tar is listed 2 times"):
        ShardIndex.load(shards)


def test_old_format_is_refused_with_the_upgrade_command(shards):
    _edit(shards, lambda raw: raw.update(format=1))
    with pytest.raises(DataError, match=r"index format 1 is not supported .* `spt shards index "):
        ShardIndex.load(shards)
