"""DecodedCache: training samples kept decoded across epochs, on one rank, under a byte bound.

What is kept per sample key is `ImageTransform.prepare`'s output (decode and the resizes that
draw nothing) and the checked label. A later epoch runs only `ImageTransform.finish` (crop,
flip) and normalisation, seeded as always per (seed, epoch, key), so its batches are
bit-identical to those of a reader without the cache; nothing about the order changes.

Where it lives: in the rank's own process. DataLoader workers are forked for every epoch and
inherit it copy-on-write (they only read it); what a worker decodes that is not kept yet
travels back to the rank with its batch (`offer` -> `admit`), so what the first epoch decoded
is there in the next, whatever data.num_workers is. Admission is first come, first kept, up to
`limit` bytes; nothing is evicted. A bad sample is never kept: it fails (or is skipped) again
every epoch, exactly as without the cache.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

Fresh = List[Tuple[str, torch.Tensor, int]]  # (key, prepared pixels, label) decoded in this batch


class DecodedCache:
    def __init__(self, limit_bytes: int) -> None:
        self.limit = int(limit_bytes)
        self.nbytes = 0
        self._items: Dict[str, Tuple[np.ndarray, int]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, key: str) -> Optional[Tuple[np.ndarray, int]]:
        return self._items.get(key)

    def offers(self) -> "Offers":
        """A budget for one reader (a worker's epoch): what this process could still admit."""
        return Offers(self.limit - self.nbytes)

    def admit(self, fresh: Sequence[Tuple[str, torch.Tensor, int]]) -> None:
        """Keep what fits, in order. Tensors from a worker live in shared memory: copied out, so
        the cache holds plain process memory and no shared-memory handles."""
        for key, pixels, label in fresh:
            if key in self._items or self.nbytes + pixels.nbytes > self.limit:
                continue
            kept = pixels.numpy().copy()
            self._items[key] = (kept, int(label))
            self.nbytes += kept.nbytes


class Offers:
    """Decides, inside one reader, which freshly decoded samples to send back: at most the
    cache's free bytes as they were when the reader started (several workers may each send
    that much; the cache admits what fits)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget

    def take(self, key: str, prepared: np.ndarray, label: int, into: Fresh) -> None:
        if prepared.nbytes <= self.budget:
            self.budget -= prepared.nbytes
            into.append((key, torch.from_numpy(prepared), label))
