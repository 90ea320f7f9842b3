"""Bounded candidate sets: per layer, the `capacity` lowest-priority tokens seen so far.

Memory is O(capacity x width) whatever the number of images: each batch is merged into the
set and everything above the running K-th priority is dropped at once.
"""
from __future__ import annotations

from typing import Optional

import torch

# How a strategy turns a layer's (B, N, d) patch tokens into candidate tokens.
KINDS = ("tokens", "mean_windows", "max_windows")


def window_tokens(tokens: torch.Tensor, windows: int, kind: str) -> torch.Tensor:
    """(B, N, d) -> (B, windows, d): each image's sequence cut into `windows` contiguous
    windows (sizes differ by at most one), each pooled; `kind` is one of KINDS."""
    if kind == "tokens":
        return tokens
    if tokens.shape[1] < windows:
        raise ValueError(f"cannot cut {tokens.shape[1]} patch tokens into {windows} windows")
    pool = {"mean_windows": lambda w: w.mean(dim=1), "max_windows": lambda w: w.amax(dim=1)}[kind]
    return torch.stack([pool(w) for w in torch.tensor_split(tokens, windows, dim=1)], dim=1)


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
