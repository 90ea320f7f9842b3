"""Exact top-1 over a split: every sample is seen by exactly one rank; counts are summed.

The counts stay on the device during the pass and are read back once, after the all-reduce:
no host sync per batch (batches are copied to the device without waiting)."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from spt_dist.distributed import Comm


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor, Any]],
             device: torch.device, dtype: torch.dtype, lockstep: bool = False,
             comm: Optional[Comm] = None, **forward: Any) -> Dict[str, float]:
    """{'top1': %, 'correct': n, 'total': n, 'loss': mean CE, 'bad_samples': n} over all ranks.

    `forward`: passed to every model call (pooled=True: the batches hold cached features).

    bad_samples: samples the reader dropped (data.on_bad_sample=skip); they are not in `total`.

    lockstep: ranks advance batch by batch together (ZeRO-3 gathers parameters inside every
    forward, so a rank that ran out of data keeps joining the collectives with an empty batch).
    """
    comm = comm or Comm.current()
    was_training = model.training
    model.eval()
    stats = torch.zeros(3, dtype=torch.float64, device=device)  # correct, total, summed loss
    it = iter(batches)
    last = None
    while True:
        batch = next(it, None)
        if lockstep and not comm.any(batch is not None):
            break
        if batch is None:
            if not lockstep:
                break
            batch = (last[0][:0], last[1][:0], None) if last is not None else None
            if batch is None:
                raise RuntimeError("a rank has no evaluation data while ZeRO-3 needs it in lockstep")
        images, labels = batch[0].to(device, dtype, non_blocking=True), batch[1].to(device, non_blocking=True)
        last = batch
        if images.shape[0] == 0:
            model(images, **forward)  # join the parameter gathers; contributes nothing
            continue
        logits = model(images, **forward).float()
        stats[0] += (logits.argmax(dim=1) == labels).sum()
        stats[1] += labels.numel()
        stats[2] += nn.functional.cross_entropy(logits, labels, reduction="sum")
    model.train(was_training)
    bad = torch.tensor([getattr(batches, "bad_samples", 0)], dtype=torch.float64)  # this rank's, after the pass
    correct, total, loss, bad = comm.all_reduce(torch.cat([stats.cpu(), bad])).tolist()
    if total == 0:
        raise RuntimeError("the evaluation split is empty on every rank")
    return {"top1": 100.0 * correct / total, "correct": int(correct), "total": int(total), "loss": loss / total,
            "bad_samples": int(bad)}
