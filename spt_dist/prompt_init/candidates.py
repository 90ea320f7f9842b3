"""Candidate tokens: SPT's pooling windows, and bounded candidate sets (per layer, the
`capacity` lowest-priority tokens seen so far).

Memory is O(capacity x width) whatever the number of images: each batch is merged into the
set and everything above the running K-th priority is dropped at once.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch

# How a strategy turns a layer's (B, N, d) patch tokens into candidate tokens.
KINDS = ("tokens", "mean_windows", "max_windows")
LAYOUTS = ("even", "spt")


def window_bounds(length: int, windows: int, layout: str = "even") -> List[Tuple[int, int]]:
    """[start, stop) of each of `windows` windows over `length` tokens.

    even: contiguous windows whose sizes differ by at most one (the first length % windows
    are one longer). spt: SPT's code: windows - 1 windows of w = length // (windows - 1)
    tokens, then one window of the last length % w tokens, or of all `length` tokens when
    that remainder is 0 (the code slices `[-0:]`); tokens between the two may be in none.
    """
    if layout == "even":
        if not 1 <= windows <= length:
            raise ValueError(f"cannot cut {length} patch tokens into {windows} windows")
        size, extra = divmod(length, windows)
        starts = [i * size + min(i, extra) for i in range(windows + 1)]
        return list(zip(starts[:-1], starts[1:]))
    if layout == "spt":
        if not 2 <= windows <= length + 1:
            raise ValueError(f"window layout spt cuts {length} tokens into {windows} - 1 windows plus one; "
                             f"needs 2 <= windows <= {length + 1}")
        width = length // (windows - 1)
        rest = length % width
        return [(i * width, (i + 1) * width) for i in range(windows - 1)] + [(length - rest if rest else 0, length)]
    raise ValueError(f"window layout '{layout}' is not allowed; allowed: {', '.join(LAYOUTS)}")


def window_tokens(tokens: torch.Tensor, windows: int, kind: str, layout: str = "even") -> torch.Tensor:
    """(B, N, d) -> (B, windows, d): each image's sequence cut into `windows` windows
    (see window_bounds), each pooled; `kind` is one of KINDS."""
    if kind == "tokens":
        return tokens
    pool = {"mean_windows": lambda w: w.mean(dim=1), "max_windows": lambda w: w.amax(dim=1)}[kind]
    bounds = window_bounds(tokens.shape[1], windows, layout)
    return torch.stack([pool(tokens[:, a:b]) for a, b in bounds], dim=1)


class CandidatePool:
    """The `capacity` lowest-priority (priority, feature) pairs added so far, for one layer."""

    def __init__(self, capacity: int, width: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1 (got {capacity})")
        self.capacity = capacity
        self.priority = torch.empty(0, dtype=torch.int64, device=device)
        self.features = torch.empty(0, width, dtype=torch.float32, device=device)
        self.seen = 0  # tokens offered, kept or not

    def __len__(self) -> int:
        return int(self.priority.numel())

    def add(self, priority: torch.Tensor, features: torch.Tensor) -> None:
        """Merge (M,) priorities with their (M, d) features."""
        self.seen += int(priority.numel())
        priority = priority.to(self.priority.device)
        if len(self) == self.capacity:
            # Cheap pre-filter: most of a batch cannot beat the current K-th priority.
            keep = priority < self.priority.max()
            priority, features = priority[keep], features[keep]
        if priority.numel() == 0:
            return
        merged_p = torch.cat([self.priority, priority])
        merged_f = torch.cat([self.features, features.to(self.features)])
        if merged_p.numel() > self.capacity:
            idx = torch.topk(merged_p, self.capacity, largest=False, sorted=False).indices
            merged_p, merged_f = merged_p[idx], merged_f[idx]
        self.priority, self.features = merged_p, merged_f

    def sorted(self, limit: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(priority, features) in ascending priority: a canonical, partition-free order."""
        order = torch.argsort(self.priority, stable=True)
        if limit is not None:
            order = order[:limit]
        return self.priority[order], self.features[order]
