"""The feature cache's containers (features.py fills them): the training batches the loop reads
instead of TrainData's, and one rank's evaluation batches, as (features, labels, keys)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Tuple

import torch

if TYPE_CHECKING:
    from spt_dist.data import TrainData

Batch = Tuple[torch.Tensor, torch.Tensor, List[str]]


class FeatureTrain:
    """TrainData's interface for the loop (`epoch`, `batches_per_epoch`, `bad_samples`) over
    cached features: (features, labels, keys) per planned batch, on the device."""

    def __init__(self, data: "TrainData", features: torch.Tensor, labels: torch.Tensor, rows: Dict[str, int]):
        self.data, self.features, self.labels, self.rows = data, features, labels, rows
        self.batches_per_epoch = data.batches_per_epoch
        self.bad_samples = 0

    def epoch(self, epoch: int, skip_batches: int = 0) -> Iterator[Batch]:
        from spt_dist.data import BadSampleError
        from spt_dist.data.order import pad_batch

        plan, picked, bad = self.data.planned_keys(epoch)[skip_batches:], [], []
        for keys in plan:
            good = [k for k in keys if k in self.rows]
            if not good:
                raise BadSampleError(f"rank {self.data.rank}: every sample of a training batch is bad "
                                     f"(first: key '{keys[0]}'); cannot pad it")
            picked.append(pad_batch(good, len(keys)))
            bad.append(len(keys) - len(good))
        # One index copy to the device per epoch, not one per step.
        flat = torch.tensor([self.rows[k] for keys in picked for k in keys], dtype=torch.int64)
        flat = flat.to(self.features.device)
        start = 0
        for keys, n_bad in zip(picked, bad):
            idx = flat[start:start + len(keys)]
            start += len(keys)
            self.bad_samples += n_bad
            yield self.features.index_select(0, idx), self.labels.index_select(0, idx), keys


class FeatureEval(list):
    """One rank's evaluation batches as (features, labels, keys), and the bad samples it dropped."""
    bad_samples = 0


@dataclass
class FeatureCache:
    train: FeatureTrain
    val: Optional[FeatureEval]
    report: Dict[str, Any]  # logged at start: samples, bytes, seconds
