"""Raw samples out of tar shards, checked before use: by offset (random access) or streamed.

`SampleReader.read` fetches one sample with two `pread`s at the offsets index.json records
and checks it against the index (image size and digest, label). `read_segment` streams a
run of samples through a tar (webdataset's tar iterators) and yields exactly one item per
expected key, in order. Both yield a placeholder naming the problem instead of raising, so
positions stay fixed: shuffling and `skip_batches` do not depend on bad data.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .index import DataError, ShardIndex, ShardInfo
from .tarscan import IMAGE_SUFFIXES, image_digest
from .transforms import ImageTransform


class BadSampleError(DataError):
    """A sample that cannot be used (data.on_bad_sample=error)."""


@dataclass
class RawSample:
    key: str
    shard: Path
    fields: Dict[str, bytes] = field(default_factory=dict)
    problem: Optional[str] = None
    label: Optional[int] = None   # what index.json says; the tar's .cls must agree
    digest: Optional[str] = None  # index.json's digest of the image bytes


class SampleReader:
    """Random access by the index's offsets; one open file per shard, opened on first use
    (so a DataLoader worker opens its own after the fork)."""

    def __init__(self, index: ShardIndex) -> None:
        self.index = index
        self._fds: Dict[str, int] = {}

    def _fd(self, shard: ShardInfo) -> int:
        fd = self._fds.get(shard.name)
        if fd is None:
            fd = self._fds[shard.name] = os.open(self.index.shard_path(shard), os.O_RDONLY)
        return fd

    def read(self, shard: ShardInfo, j: int) -> RawSample:
        path = self.index.shard_path(shard)
        key, label, digest = shard.keys[j], shard.labels[j], shard.digests[j]
        img_off, img_size, cls_off, cls_size = shard.offsets[j]
        try:
            fd = self._fd(shard)
            image, cls = os.pread(fd, img_size, img_off), os.pread(fd, cls_size, cls_off)
        except OSError as exc:
            return RawSample(key, path, problem=f"shard cannot be read ({type(exc).__name__}: {exc})")
        if len(image) != img_size or len(cls) != cls_size:
            return RawSample(key, path, problem="shard is shorter than index.json says (truncated?)")
        return RawSample(key, path, {shard.exts[j]: image, "cls": cls}, label=label, digest=digest)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        self.close()


def _files(stream, url: str) -> Iterator[dict]:
    for item in tar_file_iterator(stream):
        item["__url__"] = url
        yield item


def read_segment(shard: ShardInfo, path: Path, positions: List[int]) -> Iterator[RawSample]:
    """The samples at `positions` (ascending) of `shard` at `path`, streamed; stops reading
    after the last."""
    keys = [shard.keys[p] for p in positions]
    wanted = {k: i for i, k in enumerate(keys)}
    done = 0
    problem = "listed in index.json but not found in the shard"
    try:
        with open(path, "rb") as stream:
            for sample in group_by_keys(_files(stream, str(path))):
                i = wanted.get(sample["__key__"])
                if i is None or i < done:
                    continue  # another reader's sample: skipped without decoding
                for m in range(done, i):
                    yield RawSample(keys[m], path, problem="missing from the shard (or out of index order)")
                p = positions[i]
                yield RawSample(keys[i], path, {k: v for k, v in sample.items() if not k.startswith("__")},
                                label=shard.labels[p], digest=shard.digests[p])
                done = i + 1
                if done == len(keys):
                    return
    except (tarfile.TarError, OSError, ValueError) as exc:
        problem = f"shard is truncated or unreadable ({type(exc).__name__}: {exc})"
    for m in range(done, len(keys)):
        yield RawSample(keys[m], path, problem=problem)


def decode_sample(raw: RawSample, transform: ImageTransform, num_classes: int) -> Tuple[np.ndarray, int]:
    """The checked sample through `transform.prepare` (decode + the steps that draw nothing) and
    its label, or BadSampleError naming the shard and key."""
    def bad(why: str) -> BadSampleError:
        return BadSampleError(f"bad sample in shard {raw.shard}, key '{raw.key}': {why}")

    if raw.problem:
        raise bad(raw.problem)
    image = next((raw.fields[s] for s in IMAGE_SUFFIXES if s in raw.fields), None)
    if image is None:
        raise bad(f"no image (found: {', '.join(sorted(raw.fields)) or 'nothing'})")
    if raw.digest is not None and image_digest(image) != raw.digest:
        raise bad("image bytes differ from index.json's digest (the tar changed after it was indexed; "
                  "run `spt shards verify`)")
    if "cls" not in raw.fields:
        raise bad("no label (.cls)")
    try:
        label = int(raw.fields["cls"].decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise bad(f"label {raw.fields['cls'][:20]!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise bad(f"label {label} outside the class range 0..{num_classes - 1}")
    if raw.label is not None and label != raw.label:
        raise bad(f"the tar's .cls says {label} but index.json says {raw.label} (one of them changed "
                  f"after indexing; run `spt shards verify`)")
    try:
        return transform.prepare(image), label
    except (OSError, ValueError, SyntaxError) as exc:
        raise bad(f"image cannot be decoded ({type(exc).__name__}: {exc})") from None
