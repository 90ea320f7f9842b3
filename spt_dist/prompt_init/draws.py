"""Prototype images drawn with replacement (method.init_replacement), as SPT's code draws them.

The draw depends only on (seed, the selected keys, the number of draws): the same multiset on
every rank and for any world size, so it keeps the prototype init's partition independence.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from typing import Dict, Sequence


def draw_with_replacement(keys: Sequence[str], draws: int, seed: int) -> Dict[str, int]:
    """key -> times drawn (only keys drawn at least once), in the order of `keys`."""
    if not keys or draws < 1:
        raise ValueError(f"cannot draw {draws} image(s) from {len(keys)}")
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()
    rng = random.Random(f"prototype-draws/{seed}/{draws}/{digest}")
    counts = Counter(rng.choices(range(len(keys)), k=draws))
    return {keys[i]: counts[i] for i in sorted(counts)}


def draws_digest(draws: Dict[str, int]) -> str:
    """Order-free digest of a multiset of keys (the cache key's part for it)."""
    return hashlib.sha256("\n".join(f"{k}\t{n}" for k, n in sorted(draws.items())).encode()).hexdigest()
