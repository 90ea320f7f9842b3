"""Sampling priorities that depend only on (seed, sample key, layer, candidate kind, token index).

Every sampling decision of the prototype init is "keep the lowest priorities". Because a
token's priority does not depend on which rank, worker or batch saw it, the kept set is the
same whatever the partition of the data: world-size independence by construction.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    # uint64 arrays wrap on overflow, which is what the mixer needs.
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _key_base(seed: int, stream: str, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{stream}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def token_priorities(seed: int, stream: str, keys: Sequence[str], n_tokens: int) -> torch.Tensor:
    """(len(keys), n_tokens) int64 priorities in [0, 2**63); `stream` names layer and kind."""
    base = np.array([_key_base(seed, stream, k) for k in keys], dtype=np.uint64)
    idx = np.arange(n_tokens, dtype=np.uint64) * _GOLDEN
    mixed = _splitmix64(base[:, None] + idx[None, :])
    return torch.from_numpy((mixed >> np.uint64(1)).astype(np.int64))
