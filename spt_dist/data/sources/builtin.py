"""Real data that installs offline: scikit-learn's digits and Debian's Fashion-MNIST."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..index import DataError
from .common import Source, carve, check_fractions, make_keys

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat",
                  "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
DIGITS_CLASSES = [str(i) for i in range(10)]


def read_idx(path: Path) -> np.ndarray:
    """IDX format: magic (2 zero bytes, dtype 0x08 = uint8, ndim), big-endian dims, data."""
    if not path.is_file():
        raise DataError(f"{path}: not found; install Debian's dataset-fashion-mnist or pass --fmnist-dir")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an IDX uint8 file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _subset(images: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> List[Tuple[int, np.ndarray]]:
    new = {c: i for i, c in enumerate(classes)}
    return [(new[int(y)], x) for x, y in zip(images, labels) if int(y) in new]


def _pick_classes(classes: Optional[Sequence[int]], names: List[str]) -> List[int]:
    chosen = list(range(len(names))) if not classes else list(classes)
    bad = [c for c in chosen if not 0 <= c < len(names)] + [c for c in set(chosen) if chosen.count(c) > 1]
    if bad:
        raise DataError(f"--classes: {bad[0]} is not allowed; use distinct class ids in 0..{len(names) - 1}")
    return chosen


def _keyed(parts: Dict[str, List[Tuple[int, np.ndarray]]]) -> Dict[str, list]:
    return {s: make_keys(s, items, as_path=False) for s, items in parts.items() if items}


def _ids(prefix: str, n: int) -> List[str]:
    return [f"{prefix}{i}" for i in range(n)]


def fmnist_source(classes: Optional[Sequence[int]] = None, val_fraction: float = 0.1, split_seed: int = 0,
                  fmnist_dir: str = FMNIST_DIR) -> Source:
    """train (minus a per-class val carve-out seeded by `split_seed`), val, test (the official 10k
    test set)."""
    check_fractions(val_fraction=val_fraction)
    chosen = _pick_classes(classes, FMNIST_CLASSES)
    d = Path(fmnist_dir)
    train = _subset(read_idx(d / "train-images-idx3-ubyte.gz"), read_idx(d / "train-labels-idx1-ubyte.gz"), chosen)
    test = _subset(read_idx(d / "t10k-images-idx3-ubyte.gz"), read_idx(d / "t10k-labels-idx1-ubyte.gz"), chosen)
    val, train = carve(train, _ids("train", len(train)), [val_fraction], split_seed)
    return Source("fmnist", [FMNIST_CLASSES[c] for c in chosen], _keyed({"train": train, "val": val, "test": test}),
                  {"classes": chosen, "val_fraction": val_fraction, "split_seed": split_seed})


def digits_source(classes: Optional[Sequence[int]] = None, val_fraction: float = 0.1,
                  test_fraction: float = 0.2, split_seed: int = 0) -> Source:
    """scikit-learn's 1,797 8x8 digits (values 0..16, scaled to 0..255), split per class (seeded
    by `split_seed`)."""
    from sklearn.datasets import load_digits

    check_fractions(val_fraction=val_fraction, test_fraction=test_fraction)
    chosen = _pick_classes(classes, DIGITS_CLASSES)
    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    items = _subset(images, d.target, chosen)
    test, val, train = carve(items, _ids("digit", len(items)), [test_fraction, val_fraction], split_seed)
    return Source("digits", [DIGITS_CLASSES[c] for c in chosen], _keyed({"train": train, "val": val, "test": test}),
                  {"classes": chosen, "val_fraction": val_fraction, "test_fraction": test_fraction,
                   "split_seed": split_seed})
