"""From per-rank candidate pools to the prompts: global candidate set, then each strategy.

Sampling strategies take the p lowest-priority candidates of the global set, so they are a
uniform draw (without replacement) from every candidate token of the data, and bitwise the
same for any partition of the images. k-means clusters the global set (see kmeans.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch

from spt_dist.distributed import Comm

from .candidates import CandidatePool
from .errors import PromptInitError
from .extract import Pools
from .kmeans import kmeans
from .pass_plan import STRATEGY_KINDS, InitPlan


@dataclass
class Prototypes:
    tensor: torch.Tensor                                  # (layers, p, d) float32
    stats: List[Dict[str, float]] = field(default_factory=list)  # one dict per layer


def global_candidates(pool: CandidatePool, capacity: int, comm: Comm) -> Tuple[torch.Tensor, torch.Tensor]:
    """The `capacity` lowest-priority candidates over all ranks, in priority order, on every rank.

    Only priorities travel first; each rank then sends just its rows under the global cut, so
    no rank ever holds more than ~capacity features (whatever the world size).
    """
    prio, feats = pool.sorted()
    every = torch.cat(comm.all_gather_rows(prio))
    if every.numel() > capacity:
        cut = torch.kthvalue(every.cpu(), capacity).values.to(prio.device)
        keep = prio <= cut
        prio, feats = prio[keep], feats[keep]
    prio = torch.cat(comm.all_gather_rows(prio))
    feats = torch.cat(comm.all_gather_rows(feats))
    order = torch.argsort(prio, stable=True)[:capacity]
    return prio[order], feats[order]


def _layer_seed(seed: int, layer: int) -> int:
    return (seed * 1_000_003 + layer) % (2**63)


def combine(pools: Pools, plan: InitPlan, comm: Comm) -> Dict[str, Prototypes]:
    """Every strategy's (layers, p, d) prototypes, identical on every rank."""
    p = plan.prompt_length
    out = {s: Prototypes(torch.empty(0)) for s in plan.strategies}
    per_layer: Dict[str, List[torch.Tensor]] = {s: [] for s in plan.strategies}
    for layer in range(plan.layers):
        for kind in plan.kinds:
            _, cands = global_candidates(pools[kind][layer], plan.capacity, comm)
            if cands.shape[0] < p:
                raise PromptInitError(
                    f"layer {layer}: only {cands.shape[0]} candidate tokens ({kind}) for "
                    f"{p} prompts; use more images or a shorter method.prompt_length")
            norms = cands.norm(dim=1)
            for strategy in (s for s in plan.strategies if STRATEGY_KINDS[s] == kind):
                stats: Dict[str, float] = {"candidates": int(cands.shape[0]),
                                           "candidate_norm": float(norms.mean())}
                if strategy == "kmeans":
                    res = kmeans(cands, p, plan.kmeans_iters, plan.kmeans_tol, _layer_seed(plan.seed, layer), comm)
                    protos = res.centroids
                    stats.update(inertia=res.inertia, kmeans_iterations=res.iterations)
                else:
                    protos = cands[:p]
                stats["prompt_norm"] = float(protos.norm(dim=1).mean())
                per_layer[strategy].append(protos)
                out[strategy].stats.append(stats)
    for strategy, layers in per_layer.items():
        # Rank 0's result everywhere: a guarantee on top of the identical computation.
        out[strategy].tensor = comm.broadcast(torch.stack(layers).contiguous())
    return out
