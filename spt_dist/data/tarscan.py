"""Read the layout of a WebDataset tar: per sample its key, image member and label member,
with the byte offsets that random access needs.

WebDataset's convention: a member `dir/name.ext1.ext2` belongs to sample `dir/name` (the
key is everything up to the first dot of the file name) and members of one sample are
consecutive. Used for shards this project writes and for shards it did not (`spt shards
index`), so both end up with the same index.
"""
from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from spt_dist.io import file_sha256

from .index import DataError, ShardInfo

IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "ppm")
DIGEST_CHARS = 16  # sha256 prefix of the image bytes: identity of a sample's content


def image_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:DIGEST_CHARS]


def split_name(member: str) -> Tuple[str, str]:
    """(key, extension) of a member name, WebDataset's way: the key stops at the first dot
    of the file name (`a/b.seg.png` -> (`a/b`, `seg.png`))."""
    folder, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


@dataclass
class _Member:
    offset: int
    size: int
    data: bytes


def _members(path: Path) -> List[Tuple[str, Dict[str, _Member]]]:
    samples: List[Tuple[str, Dict[str, _Member]]] = []
    seen = set()
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = split_name(m.name)
                if not ext or key.startswith((".", "__")) or "/." in key:
                    continue  # no extension, hidden files, WebDataset's reserved names
                if not samples or samples[-1][0] != key:
                    if key in seen:
                        raise DataError(f"{path}: sample '{key}' appears twice (its members are not "
                                        f"consecutive); a WebDataset shard keeps each sample's files together")
                    seen.add(key)
                    samples.append((key, {}))
                f = tar.extractfile(m)
                samples[-1][1][ext] = _Member(m.offset_data, m.size, f.read() if f else b"")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable tar file ({type(exc).__name__}: {exc})") from None
    return samples


def scan_shard(path: Path, skip_bad: bool = False, problems: Optional[List[str]] = None) -> ShardInfo:
    """ShardInfo of the tar at `path`: keys in tar order, labels read from `.cls`, image
    extensions, offsets (image offset, size, label offset, size), image digests, sha256, size.

    A sample without an image or an integer label is an error naming it, or with `skip_bad`
    left out of the index and described in `problems`.
    """
    path = Path(path)
    info = ShardInfo(path.name, [], [])
    for key, members in _members(path):
        ext = next((s for s in IMAGE_SUFFIXES if s in members), None)
        problem = None
        if ext is None:
            problem = f"no image (found: {', '.join(sorted(members))})"
        elif "cls" not in members:
            problem = "no label (.cls)"
        else:
            try:
                label = int(members["cls"].data.decode().strip())
            except (UnicodeDecodeError, ValueError):
                problem = f"label {members['cls'].data[:20]!r} is not an integer"
        if problem:
            if not skip_bad:
                raise DataError(f"{path}: sample '{key}': {problem}")
            if problems is not None:
                problems.append(f"{path.name}: sample '{key}': {problem}")
            continue
        img, cls = members[ext], members["cls"]
        info.keys.append(key)
        info.labels.append(label)
        info.exts.append(ext)
        info.offsets.append([img.offset, img.size, cls.offset, cls.size])
        info.digests.append(image_digest(img.data))
    info.sha256, info.size = file_sha256(path), path.stat().st_size
    return info
