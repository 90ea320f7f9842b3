"""Does a training epoch mix the classes? The planned batches against a uniform shuffle.

A batch drawn uniformly from a split with class counts n_c (N samples) holds on average
sum_c [1 - P(no sample of c)] distinct classes, P hypergeometric. The reader's actual plan
(from the index alone, no tar opened) gives its own mean; their ratio is about 1 for the
exact shuffle and far below 1 when stream mode reads class-pure shards. TrainData checks it
when built, so a badly mixed run stops before its first step (data.mixing_check).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterable, Sequence

from .index import DataError

if TYPE_CHECKING:
    from spt_dist.config.schema import DataConfig


BATCH_LIMIT = 2000  # planned batches looked at (over all ranks): enough for a stable mean
RANK_LIMIT = 8      # ranks whose plan is simulated (spread over the world): each costs a pass


@dataclass
class MixingReport:
    planned: float   # mean distinct classes per planned batch
    uniform: float   # the same for a uniform permutation (expectation)
    batches: int     # planned batches looked at

    @property
    def ratio(self) -> float:
        return self.planned / self.uniform if self.uniform else 1.0

    def as_dict(self) -> Dict[str, float]:
        return {"mixing_classes_per_batch": round(self.planned, 3),
                "mixing_uniform_classes_per_batch": round(self.uniform, 3), "mixing_ratio": round(self.ratio, 4)}


def expected_distinct(class_counts: Iterable[int], batch: int) -> float:
    """Expected distinct classes in `batch` samples drawn without replacement."""
    counts = [c for c in class_counts if c > 0]
    n = sum(counts)
    if batch > n:
        raise ValueError(f"batch {batch} larger than the {n} samples")
    lg = math.lgamma
    # P(no sample of class c) = C(n - n_c, b) / C(n, b)
    total = 0.0
    for c in counts:
        none = 0.0 if n - c < batch else math.exp(lg(n - c + 1) - lg(n - c - batch + 1) - lg(n + 1) + lg(n - batch + 1))
        total += 1.0 - none
    return total


def mean_distinct(batches: Sequence[Sequence[int]]) -> float:
    return sum(len(set(b)) for b in batches) / len(batches)


def mixing_report(data: Any) -> MixingReport:
    """`data` is a TrainData: its plan for epoch 0 over all ranks (the same on every rank)."""
    w = data.world_size
    ranks = sorted({r * w // min(w, RANK_LIMIT) for r in range(min(w, RANK_LIMIT))})
    batches = data.label_batches(0, ranks, max(1, BATCH_LIMIT // len(ranks)))
    labels = data.split.labels()
    keys = data.selected_keys
    counts = Counter(labels[k] for k in keys).values()
    sizes = Counter(len(b) for b in batches)  # a kept short last batch is compared at its own size
    uniform = sum(n * expected_distinct(counts, size) for size, n in sizes.items()) / len(batches)
    return MixingReport(mean_distinct(batches), uniform, len(batches))


MIN_BATCHES = 16  # fewer planned batches: the mean is too noisy to stop a run on, only to warn


def check_mixing(report: MixingReport, cfg: "DataConfig") -> None:
    """Stream mode, per data.mixing_check: error (default), warn, or ignore, when the ratio is
    below data.min_mixing; a plan of fewer than MIN_BATCHES batches is only warned about. The
    exact shuffle is uniform by construction: reported, not checked."""
    if cfg.shuffle == "exact" or cfg.mixing_check == "ignore" or report.ratio >= cfg.min_mixing:
        return
    msg = (f"data.shuffle={cfg.shuffle}: the planned batches hold {report.planned:.2f} distinct classes on "
           f"average against {report.uniform:.2f} for a uniform shuffle (ratio {report.ratio:.2f} < "
           f"data.min_mixing={cfg.min_mixing}): the shards are ordered by class and the stream cannot mix "
           f"them. Use data.shuffle=exact (random access, the default), or rebuild the shards with "
           f"`spt shards build` (it permutes every split), or raise data.stream_shards / data.shuffle_buffer")
    if cfg.mixing_check == "error" and report.batches >= MIN_BATCHES:
        raise DataError(msg + "; data.mixing_check=warn trains anyway")
    if report.batches < MIN_BATCHES and cfg.mixing_check == "error":
        msg += (f" (only {report.batches} planned batches, fewer than the {MIN_BATCHES} a run is stopped on: "
                f"training anyway)")
    import warnings

    warnings.warn(msg)
