"""Tiny shard folders with chosen shard sizes, for tests and smoke runs (real tar files)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image

from .index import ShardIndex, SplitInfo
from .writer import write_tar


def tiny_image(label: int, num_classes: int, size: int, rng: np.random.Generator, fmt: str = "PNG") -> bytes:
    """A noisy image whose brightness encodes the label (learnable, but not trivially)."""
    base = 40 + 170 * label / max(1, num_classes - 1)
    pixels = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def tiny_shards(root: str | Path, shard_sizes: Dict[str, Sequence[int]], num_classes: int = 3,
                size: int = 8, seed: int = 0) -> ShardIndex:
    """Write `<split>-NNNNNN.tar` shards holding exactly the given numbers of samples."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, sizes in shard_sizes.items():
        shards, n = [], 0
        for i, count in enumerate(sizes):
            records = []
            for _ in range(count):
                label = n % num_classes
                records.append((f"{split}-{n:07d}", tiny_image(label, num_classes, size, rng), "png",
                                str(label).encode()))
                n += 1
            shards.append(write_tar(root / f"{split}-{i:06d}.tar", records))
        splits[split] = SplitInfo(split, shards)
    index = ShardIndex(root, [f"class{c}" for c in range(num_classes)], splits, {"kind": "synthetic"})
    index.save()
    return index


def write_image_tree(source, root: str | Path, per_class: Optional[Dict[str, int]] = None) -> Path:
    """A source's images as an image-folder tree `root/<split>/<class>/<key>.png`, class by
    class, the way users keep data (for tests and benchmarks of class-ordered input).
    `per_class` caps each split (e.g. {"train": 300, "test": 100}); samples are taken in order."""
    root = Path(root)
    for split, samples in source.splits.items():
        cap = (per_class or {}).get(split)
        if per_class is not None and cap is None:
            continue
        taken: Dict[int, int] = {}
        for s in sorted(samples, key=lambda s: s.label):
            if cap is not None and taken.get(s.label, 0) >= cap:
                continue
            taken[s.label] = taken.get(s.label, 0) + 1
            path = root / split / source.classes[s.label] / f"{s.key}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(s.array)).save(path)
    return root
