"""What every source produces: class names and, per split, samples to write."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..fraction import hashed_order
from ..index import DataError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class Sample:
    """One image to write: a file (`path`) or pixels (`array`, uint8 HxW or HxWx3)."""
    key: str
    label: int
    path: Optional[str] = None
    array: Optional[np.ndarray] = None

    def origin(self) -> str:
        return self.path or self.key


@dataclass
class Source:
    kind: str
    classes: List[str]
    splits: Dict[str, List[Sample]]
    args: Dict[str, Any] = field(default_factory=dict)


def make_keys(split: str, items: Sequence[Tuple[int, Any]], as_path: bool = True) -> List[Sample]:
    """Samples keyed `<split>-<position>`; keys carry no dots (webdataset splits on them)."""
    safe = split.replace(".", "_")
    return [Sample(f"{safe}-{i:07d}", label, path=x if as_path else None, array=None if as_path else x)
            for i, (label, x) in enumerate(items)]


def check_fractions(**fractions: float) -> None:
    """Each carve-out fraction in [0, 1) and their sum < 1, so train keeps a share and no
    sample lands in two splits. Named as the Python argument and the CLI option."""
    for name, frac in fractions.items():
        if not 0.0 <= frac < 1.0:  # also refuses NaN
            raise DataError(f"{name} (--{name.replace('_', '-')}) must be in [0, 1), got {frac}")
    if sum(fractions.values()) >= 1.0:
        shown = " + ".join(f"{n} {f}" for n, f in fractions.items())
        raise DataError(f"{shown} = {sum(fractions.values()):g} leaves no train split; the sum must be below 1")


def carve(items: Sequence[Tuple[int, Any]], ids: Sequence[str], fractions: Sequence[float],
          seed: int) -> List[List[Tuple[int, Any]]]:
    """Deterministic per-class split of `items` into len(fractions)+1 parts (the last: the rest).

    `ids` name the items stably (a relative path, an array position), so the split does
    not depend on listing order.
    """
    if any(not 0.0 <= f < 1.0 for f in fractions) or sum(fractions) >= 1.0:
        raise DataError(f"split fractions {list(fractions)}: each must be in [0, 1) and their sum below 1")
    by_class: Dict[int, List[int]] = defaultdict(list)
    for pos, (label, _) in enumerate(items):
        by_class[label].append(pos)
    parts: List[List[int]] = [[] for _ in range(len(fractions) + 1)]
    for label, positions in by_class.items():
        order = hashed_order([ids[p] for p in positions], seed)
        pos_of = {ids[p]: p for p in positions}
        start = 0
        for part, frac in enumerate(fractions):
            n = int(round(frac * len(order)))
            parts[part].extend(pos_of[i] for i in order[start:start + n])
            start += n
        parts[-1].extend(pos_of[i] for i in order[start:])
    return [[items[p] for p in sorted(part)] for part in parts]


def cap_per_class(samples: List[Sample], max_per_class: int, seed: int) -> List[Sample]:
    """At most `max_per_class` samples of each class, chosen by seeded hash, order kept."""
    if max_per_class <= 0:
        return samples
    by_class: Dict[int, List[str]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s.origin())
    keep = set()
    for ids in by_class.values():
        keep.update(hashed_order(ids, seed)[:max_per_class])
    return [s for s in samples if s.origin() in keep]


def check_labels(source: Source) -> None:
    n = len(source.classes)
    for split, samples in source.splits.items():
        for s in samples:
            if not 0 <= s.label < n:
                raise DataError(f"{source.kind} source, split '{split}': {s.origin()} has label {s.label}, "
                                f"outside 0..{n - 1}")
