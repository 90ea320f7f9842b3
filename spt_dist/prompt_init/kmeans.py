"""k-means over a candidate set that every rank holds in the same (priority) order.

The Lloyd assignments are split across ranks (rank r takes rows r, r+W, ...); centroid sums
(float64) and counts are all-reduced, so results match any world size up to the order of
float summation. The k-means++ seeding and empty-cluster reseeding are computed from the
whole set with a seeded generator, identically everywhere, and rank 0's centroids are
broadcast after every step so that no rank can drift.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from spt_dist.distributed import Comm


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (k, d) float32
    inertia: float           # sum of squared distances to the nearest centroid
    iterations: int


def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    d = (x * x).sum(1, keepdim=True) - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return d.clamp_min_(0.0)


def kmeans_pp(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling); duplicate-only sets fall back to uniform draws."""
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [points[first]]
    nearest = _sq_dist(points, points[first : first + 1]).squeeze(1).double()
    for _ in range(1, k):
        weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
        idx = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(points[idx])
        nearest = torch.minimum(nearest, _sq_dist(points, points[idx : idx + 1]).squeeze(1).double())
    return torch.stack(centroids)


def _reseed_empty(points: torch.Tensor, centroids: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    # Each empty cluster takes one of the points farthest from their centroid; ties -> lowest index.
    far = _sq_dist(points, centroids).min(1).values
    order = torch.argsort(-far, stable=True)[: int(empty.numel())]
    centroids = centroids.clone()
    centroids[empty] = points[order]
    return centroids


def kmeans(points: torch.Tensor, k: int, iters: int, tol: float, seed: int, comm: Comm) -> KMeansResult:
    """Lloyd's k-means with k-means++ seeding; stops after `iters` steps or when the total
    squared centroid shift falls to `tol` x the mean per-feature variance (sklearn's rule)."""
    if points.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points (got {points.shape[0]})")
    points = points.float()
    gen = torch.Generator().manual_seed(seed)
    centroids = comm.broadcast(kmeans_pp(points.cpu(), k, gen).to(points.device))
    threshold = tol * float(points.double().var(0, unbiased=False).mean())
    local = points[comm.rank :: comm.world_size]
    inertia, it = 0.0, 0
    for it in range(1, iters + 1):
        dist = _sq_dist(local, centroids)
        best, assign = dist.min(1)
        sums = torch.zeros(k, points.shape[1], dtype=torch.float64, device=points.device)
        sums.index_add_(0, assign, local.double())
        counts = torch.bincount(assign, minlength=k).double()
        packed = comm.all_reduce(torch.cat([sums.flatten(), counts, best.double().sum()[None]]))
        sums, counts = packed[: sums.numel()].view_as(sums), packed[sums.numel() : -1]
        inertia = float(packed[-1])
        new = (sums / counts.clamp_min(1.0)[:, None]).float()
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            new[empty] = centroids[empty]
            new = _reseed_empty(points, new, empty)
        new = comm.broadcast(new)
        shift = float(((new.double() - centroids.double()) ** 2).sum())
        centroids = new
        if shift <= threshold and empty.numel() == 0:
            break
    return KMeansResult(centroids=centroids, inertia=inertia, iterations=it)
