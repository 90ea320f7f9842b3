"""The plan of one prototype-init pass (what it computes); plain data shared by extraction, combination and cache."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

# Strategy -> the candidate tokens it draws from (see candidates.KINDS).
STRATEGY_KINDS = {
    "random_sample": "tokens",
    "kmeans": "tokens",
    "mean_pool": "mean_windows",
    "max_pool": "max_windows",
}
STRATEGIES = tuple(STRATEGY_KINDS)


def has_prototype_pass(method) -> bool:
    """Whether a run with these `method` settings computes token prototypes: SPT's init, or the
    alignment reference of any prompt method."""
    return bool(method.prompt_length) and (method.name == "spt" or method.track_alignment)


@dataclass(frozen=True)
class InitPlan:
    strategies: Tuple[str, ...]  # prototype sets to compute from one pass, e.g. ("mean_pool", "kmeans")
    layers: int                  # 1 (shallow) or the backbone depth (deep)
    prompt_length: int
    capacity: int                # method.init_candidates: per-layer tokens kept per rank and globally
    seed: int
    kmeans_iters: int = 30
    kmeans_tol: float = 1e-4
    window_layout: str = "even"  # mean_pool / max_pool windows (candidates.window_bounds)

    def __post_init__(self) -> None:
        bad = [s for s in self.strategies if s not in STRATEGY_KINDS]
        if bad:
            raise ValueError(f"unknown prototype strategy {bad}; allowed: {', '.join(STRATEGIES)}")

    @property
    def kinds(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(STRATEGY_KINDS[s] for s in self.strategies))
