"""`index.json`: what a shard folder holds, so readers plan without opening a tar.

Format (version 1)::

    {"format": 1, "source": {"kind": "fmnist", ...}, "classes": ["sandal", ...],
     "content_hash": "<sha256>",
     "splits": {"train": {"num_samples": 900, "shards": [
         {"name": "train-000000.tar", "num_samples": 512, "sha256": "...", "size": 1234,
          "keys": ["train-0000000", ...], "labels": [3, ...]}, ...]}}}

Keys are listed in tar order; labels mirror each sample's `.cls`, so fractions can be
stratified from the index alone. `size` (bytes) is checked on load: a cheap guard against
tars replaced or truncated after the index was written (indices without it skip the check).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from spt_dist.errors import SptError

INDEX_NAME = "index.json"
FORMAT = 1


class DataError(SptError, ValueError):
    """Data that cannot be used as asked; the message names the file, shard, key or split."""


@dataclass
class ShardInfo:
    name: str
    keys: List[str]
    labels: List[int]
    sha256: str = ""
    size: int = 0  # bytes of the tar; 0 = not recorded

    @property
    def num_samples(self) -> int:
        return len(self.keys)


@dataclass
class SplitInfo:
    name: str
    shards: List[ShardInfo]

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    def keys(self) -> List[str]:
        return [k for s in self.shards for k in s.keys]

    def labels(self) -> Dict[str, int]:
        return {k: lab for s in self.shards for k, lab in zip(s.keys, s.labels)}


@dataclass
class ShardIndex:
    root: Path
    classes: List[str]
    splits: Dict[str, SplitInfo]
    source: Dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitInfo:
        if name not in self.splits:
            raise DataError(f"{self.root / INDEX_NAME}: no split '{name}'; "
                            f"splits in this index: {', '.join(sorted(self.splits)) or 'none'}")
        return self.splits[name]

    def shard_path(self, shard: ShardInfo) -> Path:
        return self.root / shard.name

    def compute_hash(self) -> str:
        """Hash of classes and every shard's bytes (via their sha256) and key list."""
        h = hashlib.sha256(json.dumps(self.classes).encode())
        for name in sorted(self.splits):
            for s in self.splits[name].shards:
                h.update(json.dumps([name, s.name, s.sha256, s.keys, s.labels]).encode())
        return h.hexdigest()

    def to_json(self) -> Dict[str, Any]:
        return {"format": FORMAT, "source": self.source, "classes": self.classes,
                "content_hash": self.content_hash,
                "splits": {n: {"num_samples": sp.num_samples,
                               "shards": [{"name": s.name, "num_samples": s.num_samples,
                                           "sha256": s.sha256, "size": s.size, "keys": s.keys,
                                           "labels": s.labels}
                                          for s in sp.shards]}
                           for n, sp in self.splits.items()}}

    def save(self) -> Path:
        """Write atomically: a reader never sees a half-written index."""
        self.content_hash = self.compute_hash()
        path = self.root / INDEX_NAME
        tmp = path.with_name(f".{INDEX_NAME}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, root: str | os.PathLike) -> "ShardIndex":
        root = Path(os.path.expanduser(str(root)))
        path = root / INDEX_NAME if root.is_dir() or not str(root).endswith(".json") else root
        if not path.is_file():
            raise DataError(f"{path}: index not found; build shards with `spt shards build ...`")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise DataError(f"{path}: malformed index: expected a JSON object, got {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise DataError(f"{path}: index format {raw.get('format')!r} is not supported (expected {FORMAT})")
        classes = _field(path, raw, "classes", list, "")
        splits = {}
        for name, sp in _field(path, raw, "splits", dict, "").items():
            where = f"splits.{name}"
            if not isinstance(sp, dict):
                raise DataError(f"{path}: malformed index: '{where}' should be an object")
            shards = [_shard(path, s, f"{where}.shards[{i}]")
                      for i, s in enumerate(_field(path, sp, "shards", list, where))]
            splits[name] = SplitInfo(name, shards)
        index = cls(path.parent, [str(c) for c in classes], splits, raw.get("source", {}), raw.get("content_hash", ""))
        index.check_files()
        return index

    def check_files(self) -> None:
        """Every listed shard exists with its recorded size (a stat each, no reading)."""
        for split in self.splits.values():
            for s in split.shards:
                path = self.shard_path(s)
                if not path.is_file():
                    raise DataError(f"{self.root / INDEX_NAME}: shard {s.name} (split '{split.name}') "
                                    f"is missing; rebuild the folder with `spt shards build ...`")
                actual = path.stat().st_size
                if s.size and actual != s.size:
                    raise DataError(f"{path}: shard {s.name} is {actual} bytes but index.json records {s.size}; "
                                    f"the tar changed after the index was written (a partial rebuild?); "
                                    f"rebuild the folder with `spt shards build ...`")


def _field(path: Path, obj: Dict[str, Any], key: str, kind: type, where: str) -> Any:
    """obj[key], checked to be a `kind`; a malformed index names the file and the key."""
    name = f"{where}.{key}" if where else key
    if key not in obj:
        raise DataError(f"{path}: malformed index: missing key '{name}'")
    if not isinstance(obj[key], kind):
        raise DataError(f"{path}: malformed index: '{name}' should be a {kind.__name__}, "
                        f"got {type(obj[key]).__name__}")
    return obj[key]


def _shard(path: Path, raw: Any, where: str) -> ShardInfo:
    if not isinstance(raw, dict):
        raise DataError(f"{path}: malformed index: '{where}' should be an object")
    name = _field(path, raw, "name", str, where)
    keys = _field(path, raw, "keys", list, where)
    try:
        labels = [int(x) for x in _field(path, raw, "labels", list, where)]
        size = int(raw.get("size", 0))
    except (TypeError, ValueError):
        raise DataError(f"{path}: malformed index: '{where}' has a non-integer label or size") from None
    if len(keys) != len(labels):
        raise DataError(f"{path}: shard {name} lists {len(keys)} keys but {len(labels)} labels")
    return ShardInfo(name, [str(k) for k in keys], labels, str(raw.get("sha256", "")), size)
