"""`index.json`: what a shard folder holds, so readers plan and read without scanning a tar.

Format (version 2)::

    {"format": 2, "source": {"kind": "fmnist", "split_seed": 0, "shuffle_seed": 0, ...},
     "classes": ["sandal", ...], "content_hash": "<sha256>", "index_hash": "<sha256>",
     "splits": {"train": {"num_samples": 900, "class_counts": {"0": 180, ...}, "shards": [
         {"name": "train-000000.tar", "num_samples": 512, "sha256": "...", "size": 1234,
          "class_counts": {"0": 97, ...},
          "keys": ["train-0000417", ...], "labels": [3, ...], "exts": ["png", ...],
          "offsets": [[1536, 801, 2560, 1], ...], "digests": ["9f2c...", ...]}, ...]}}}

Per sample, in tar order: key, label (mirrors its `.cls`), image extension, byte offsets
(image data offset, image size, label offset, label size) for random access, and the first
16 hex digits of the image's sha256 (its content identity: overlap between splits is found
by it). `class_counts` are derived from the labels, for people and tools reading the file.

Checked on load, cheaply: the structure (errors name the file and the key), that the index
matches its own `index_hash` (an index edited by hand is refused), shard names unique,
keys unique within a split, and every shard present with its recorded byte size.
`spt shards verify` checks the tars' bytes against `sha256`, keys and labels.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from spt_dist.errors import SptError

INDEX_NAME = "index.json"
FORMAT = 2
UPGRADE = "build it again with `spt shards index {root}` (reads the tars, keeps them as they are)"


class DataError(SptError, ValueError):
    """Data that cannot be used as asked; the message names the file, shard, key or split."""


@dataclass
class ShardInfo:
    name: str
    keys: List[str]
    labels: List[int]
    sha256: str = ""
    size: int = 0                                              # bytes of the tar
    exts: List[str] = field(default_factory=list)              # image member extension per sample
    offsets: List[List[int]] = field(default_factory=list)     # [img offset, img size, cls offset, cls size]
    digests: List[str] = field(default_factory=list)           # sha256[:16] of the image bytes

    @property
    def num_samples(self) -> int:
        return len(self.keys)

    def class_counts(self) -> Dict[str, int]:
        return {str(c): n for c, n in sorted(Counter(self.labels).items())}


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

    def digests(self) -> Dict[str, str]:
        """key -> content digest of the image."""
        return {k: d for s in self.shards for k, d in zip(s.keys, s.digests)}

    def class_counts(self) -> Dict[str, int]:
        total: Counter = Counter()
        for s in self.shards:
            total.update(s.labels)
        return {str(c): n for c, n in sorted(total.items())}


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
                "splits": {n: {"num_samples": sp.num_samples, "class_counts": sp.class_counts(),
                               "shards": [{"name": s.name, "num_samples": s.num_samples, "sha256": s.sha256,
                                           "size": s.size, "class_counts": s.class_counts(), "keys": s.keys,
                                           "labels": s.labels, "exts": s.exts, "offsets": s.offsets,
                                           "digests": s.digests}
                                          for s in sp.shards]}
                           for n, sp in self.splits.items()}}

    def save(self) -> Path:
        """Write atomically: a reader never sees a half-written index."""
        from spt_dist.io import write_text_atomic

        self.content_hash = self.compute_hash()
        raw = self.to_json()
        raw["index_hash"] = self_hash(raw)
        path = self.root / INDEX_NAME
        write_text_atomic(path, json.dumps(raw, indent=1))
        return path

    @classmethod
    def load(cls, root: str | os.PathLike) -> "ShardIndex":
        root = Path(os.path.expanduser(str(root)))
        path = root / INDEX_NAME if root.is_dir() or not str(root).endswith(".json") else root
        if not path.is_file():
            raise DataError(f"{path}: index not found; build shards with `spt shards build ...`, "
                            f"or index existing WebDataset tars with `spt shards index {path.parent}`")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise DataError(f"{path}: malformed index: expected a JSON object, got {type(raw).__name__}")
        if raw.get("format") != FORMAT:
            raise DataError(f"{path}: index format {raw.get('format')!r} is not supported (this version reads "
                            f"{FORMAT}, which adds offsets for random access); "
                            + UPGRADE.format(root=path.parent))
        if raw.get("index_hash") != self_hash(raw):
            raise DataError(f"{path}: the index does not match its own index_hash: it was changed after it "
                            f"was written (edited by hand?); " + UPGRADE.format(root=path.parent)
                            + ", or rebuild the folder with `spt shards build ...`")
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
        index.check_unique()
        index.check_files()
        return index

    def check_unique(self) -> None:
        """A shard listed twice (its samples would be trained twice) or a key twice in a split."""
        names = Counter(s.name for sp in self.splits.values() for s in sp.shards)
        twice = sorted(n for n, c in names.items() if c > 1)
        if twice:
            raise DataError(f"{self.root / INDEX_NAME}: shard {twice[0]} is listed {names[twice[0]]} times; "
                            f"each shard belongs to one split once. " + UPGRADE.format(root=self.root))
        for sp in self.splits.values():
            keys = Counter(sp.keys())
            dup = next((k for k, c in keys.items() if c > 1), None)
            if dup is not None:
                raise DataError(f"{self.root / INDEX_NAME}: key '{dup}' appears {keys[dup]} times in split "
                                f"'{sp.name}'; keys name samples uniquely within a split")

    def check_files(self) -> None:
        """Every listed shard exists with its recorded size (a stat each, no reading)."""
        for split in self.splits.values():
            for s in split.shards:
                path = self.shard_path(s)
                if not path.is_file():
                    raise DataError(f"{self.root / INDEX_NAME}: shard {s.name} (split '{split.name}') "
                                    f"is missing; put it back, or index the tars that are there again with "
                                    f"`spt shards index {self.root}` (shards this project built: rebuild them "
                                    f"with `spt shards build ...`)")
                actual = path.stat().st_size
                if actual != s.size:
                    raise DataError(f"{path}: shard {s.name} is {actual} bytes but index.json records {s.size}; "
                                    f"the tar changed after the index was written (a partial rebuild?); "
                                    f"rebuild the folder, or " + UPGRADE.format(root=self.root))


def self_hash(raw: Dict[str, Any]) -> str:
    body = {k: v for k, v in raw.items() if k != "index_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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
    per_sample = {k: _field(path, raw, k, list, where) for k in ("labels", "exts", "offsets", "digests")}
    try:
        labels = [int(x) for x in per_sample["labels"]]
        offsets = per_sample["offsets"]  # JSON integers as written; their shape is checked below
        size = int(_field(path, raw, "size", int, where))
    except (TypeError, ValueError):
        raise DataError(f"{path}: malformed index: '{where}' has a non-integer label, offset or size") from None
    bad = next((k for k, v in per_sample.items() if len(v) != len(keys)), None)
    if bad or not all(isinstance(o, list) and len(o) == 4 for o in offsets):
        raise DataError(f"{path}: malformed index: shard {name} lists {len(keys)} keys but "
                        f"{len(per_sample[bad or 'offsets'])} {bad or 'offsets of 4 integers'}")
    return ShardInfo(name, [str(k) for k in keys], labels, str(raw.get("sha256", "")), size,
                     [str(e) for e in per_sample["exts"]], offsets, [str(d) for d in per_sample["digests"]])
