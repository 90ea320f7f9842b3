"""Class-stratified, nested subsets of a split (VPT's data-fraction studies).

Every key gets a seeded hash rank within its class; a subset is a prefix of that ranking,
so for one seed the 10% subset lies inside the 20% one.
"""
from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

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
    """Exactly `n` keys, shared over classes in proportion to their size (largest remainders)."""
    groups = _by_class(index, split)
    total = sum(len(k) for k in groups.values())
    if not 1 <= n <= total:
        raise DataError(f"split '{split}' has {total} samples; cannot select {n}")
    exact = {c: n * len(k) / total for c, k in groups.items()}
    counts = {c: math.floor(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (counts[c] - exact[c], c))[: n - sum(counts.values())]:
        counts[c] += 1
    return _select(index, split, counts, seed)


def write_selected_keys(run_dir: str | Path, keys: Sequence[str]) -> Path:
    path = Path(run_dir) / KEYS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(f"{k}\n" for k in keys))
    return path


def read_selected_keys(run_dir: str | Path) -> List[str]:
    return (Path(run_dir) / KEYS_FILE).read_text().split()
