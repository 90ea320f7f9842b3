"""Class-stratified, nested subsets of a split (VPT's data-fraction studies).

Every key gets a seeded hash rank within its class; a subset is a prefix of that ranking,
so for one seed the 10% subset lies inside the 20% one. An exact count (`select_count`) shares
its n samples over the classes by one seeded sequence of class picks, so select_count(n) lies
inside select_count(n + 1).
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

import numpy as np

from spt_dist.io import write_text_atomic

from .index import DataError, ShardIndex

KEYS_FILE = "train_keys.txt"


def hashed_order(items: Iterable[str], seed: int) -> List[str]:
    """`items` in a seeded pseudo-random order that does not depend on their input order."""
    return sorted(items, key=lambda k: (hashlib.sha256(f"{seed}:{k}".encode()).digest(), k))


def _by_class(index: ShardIndex, split: str) -> Dict[int, List[str]]:
    groups: Dict[int, List[str]] = defaultdict(list)
    for key, label in index.split(split).labels().items():
        groups[label].append(key)
    return groups


def _select(index: ShardIndex, split: str, per_class: Dict[int, int], seed: int) -> List[str]:
    groups = _by_class(index, split)
    chosen = set()
    for label, keys in groups.items():
        chosen.update(hashed_order(keys, seed)[:per_class[label]])
    # Keep index order so readers and the recorded list agree on sequence.
    return [k for k in index.split(split).keys() if k in chosen]


def select_fraction(index: ShardIndex, split: str, fraction: float, seed: int) -> List[str]:
    """Per class round(fraction * n_c) keys (at least 1), nested across fractions."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"data.fraction must be in (0, 1], got {fraction}")
    groups = _by_class(index, split)
    return _select(index, split, {c: max(1, round(fraction * len(k))) for c, k in groups.items()}, seed)


def select_count(index: ShardIndex, split: str, n: int, seed: int) -> List[str]:
    """Exactly `n` keys: a prefix of `count_order`'s class sequence, each class's share taken
    from its own seeded ranking (as the fractions take theirs), so the subsets are nested in n."""
    groups = _by_class(index, split)
    total = sum(len(k) for k in groups.values())
    if not 1 <= n <= total:
        raise DataError(f"split '{split}' has {total} samples; cannot select {n}")
    labels = sorted(groups)
    picks = count_order([len(groups[c]) for c in labels], n, seed)
    counts = {c: int(k) for c, k in zip(labels, np.bincount(picks, minlength=len(labels)))}
    return _select(index, split, counts, seed)


def count_order(sizes: Sequence[int], n: int, seed: int) -> List[int]:
    """The first `n` picks of one sequence of classes (of `sizes` samples each), so that the
    counts of n + 1 picks are those of n plus one. Every class is picked once first (the largest
    first, so every class has one once n reaches the number of classes); then, by Balinski and
    Young's quota method, among the classes whose count stays within the ceiling of its share
    of the new total (k picks: k * size / total), the one with the largest size / (count + 1).
    A class's count is never above the ceiling of its share; ties go by a seeded class order."""
    size = np.asarray(sizes, dtype=np.int64)
    total, tie = int(size.sum()), _class_ties(len(sizes), seed)
    taken, picks = np.zeros_like(size), []
    for k in range(1, n + 1):
        c = _next_class(size, taken, total, k, tie)
        taken[c] += 1
        picks.append(c)
    return picks


def _class_ties(classes: int, seed: int) -> np.ndarray:
    """Per class its place in a seeded order of the classes, the first one highest."""
    order = sorted(range(classes), key=lambda c: hashlib.sha256(f"{seed}:class:{c}".encode()).digest())
    tie = np.empty(classes, dtype=np.int64)
    tie[order] = np.arange(classes - 1, -1, -1)
    return tie


def _next_class(size: np.ndarray, taken: np.ndarray, total: int, k: int, tie: np.ndarray) -> int:
    """The class of the k-th pick (see count_order); some class is always open: the ceilings
    of the shares of k picks sum to at least k, the counts so far to k - 1."""
    unpicked = taken == 0
    open_ = unpicked if unpicked.any() else taken < -(-k * size // total)
    priority = np.where(open_, size / (taken + 1), -1.0)
    return int(np.argmax(np.where(priority == priority.max(), tie, -1)))


def write_selected_keys(run_dir: str | Path, keys: Sequence[str]) -> Path:
    path = Path(run_dir) / KEYS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(f"{k}\n" for k in keys))
    return path


def read_selected_keys(run_dir: str | Path) -> List[str]:
    return (Path(run_dir) / KEYS_FILE).read_text().split()
