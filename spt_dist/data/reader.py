"""Raw samples out of tar shards (webdataset's tar iterators), checked before use.

`read_segment` yields exactly one item per expected key, in order: the raw sample, or a
placeholder naming why it is missing (truncated tar, key absent). Keeping positions
fixed is what makes shuffling and `skip_batches` independent of bad data.
"""
from __future__ import annotations

import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .index import DataError
from .transforms import ImageTransform

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "ppm")


class BadSampleError(DataError):
    """A sample that cannot be used (data.on_bad_sample=error)."""


@dataclass
class RawSample:
    key: str
    shard: Path
    fields: Dict[str, bytes] = field(default_factory=dict)
    problem: Optional[str] = None


def _files(stream, url: str) -> Iterator[dict]:
    for item in tar_file_iterator(stream):
        item["__url__"] = url
        yield item


def read_segment(path: Path, keys: List[str]) -> Iterator[RawSample]:
    """The samples `keys` of shard `path` (keys in tar order); stops reading after the last."""
    wanted = {k: i for i, k in enumerate(keys)}
    done = 0
    problem = "listed in index.json but not found in the shard"
    try:
        with open(path, "rb") as stream:
            for sample in group_by_keys(_files(stream, str(path))):
                i = wanted.get(sample["__key__"])
                if i is None or i < done:
                    continue  # another reader's sample: skipped without decoding
                for k in keys[done:i]:
                    yield RawSample(k, path, problem="missing from the shard (or out of index order)")
                yield RawSample(keys[i], path, {k: v for k, v in sample.items() if not k.startswith("__")})
                done = i + 1
                if done == len(keys):
                    return
    except (tarfile.TarError, OSError, ValueError) as exc:
        problem = f"shard is truncated or unreadable ({type(exc).__name__}: {exc})"
    for k in keys[done:]:
        yield RawSample(k, path, problem=problem)


def decode_sample(raw: RawSample, transform: ImageTransform, num_classes: int,
                  rng: Optional[random.Random]) -> Tuple[np.ndarray, int]:
    """uint8 (H, W, 3) pixels and label, or BadSampleError naming the shard and key."""
    def bad(why: str) -> BadSampleError:
        return BadSampleError(f"bad sample in shard {raw.shard}, key '{raw.key}': {why}")

    if raw.problem:
        raise bad(raw.problem)
    image = next((raw.fields[s] for s in IMAGE_SUFFIXES if s in raw.fields), None)
    if image is None:
        raise bad(f"no image (found: {', '.join(sorted(raw.fields)) or 'nothing'})")
    if "cls" not in raw.fields:
        raise bad("no label (.cls)")
    try:
        label = int(raw.fields["cls"].decode().strip())
    except (UnicodeDecodeError, ValueError):
        raise bad(f"label {raw.fields['cls'][:20]!r} is not an integer") from None
    if not 0 <= label < num_classes:
        raise bad(f"label {label} outside the class range 0..{num_classes - 1}")
    try:
        return transform.pixels(image, rng), label
    except (OSError, ValueError, SyntaxError) as exc:
        raise bad(f"image cannot be decoded ({type(exc).__name__}: {exc})") from None
