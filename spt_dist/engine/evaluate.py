"""Exact top-1 over a split: every sample is seen by exactly one rank; counts are summed."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

import torch
from torch import nn

from spt_dist.distributed import Comm


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, torch.Tensor, Any]],
             device: torch.device, dtype: torch.dtype, lockstep: bool = False,
             comm: Optional[Comm] = None) -> Dict[str, float]:
    """{'top1': %, 'correct': n, 'total': n, 'loss': mean CE, 'bad_samples': n} over all ranks.

    bad_samples: samples the reader dropped (data.on_bad_sample=skip); they are not in `total`.

    lockstep: ranks advance batch by batch together (ZeRO-3 gathers parameters inside every
    forward, so a rank that ran out of data keeps joining the collectives with an empty batch).
    """
    comm = comm or Comm.current()
    was_training = model.training
    model.eval()
    stats = torch.zeros(4, dtype=torch.float64)  # correct, total, summed loss, bad samples
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
        images, labels = batch[0].to(device, dtype), batch[1].to(device)
        last = batch
        if images.shape[0] == 0:
            model(images)  # join the parameter gathers; contributes nothing
            continue
        logits = model(images).float()
        stats[0] += (logits.argmax(dim=1) == labels).sum().item()
        stats[1] += labels.numel()
        stats[2] += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
    model.train(was_training)
    stats[3] = getattr(batches, "bad_samples", 0)  # this rank's, after the pass
    correct, total, loss, bad = comm.all_reduce(stats).tolist()
    if total == 0:
        raise RuntimeError("the evaluation split is empty on every rank")
    return {"top1": 100.0 * correct / total, "correct": int(correct), "total": int(total), "loss": loss / total,
            "bad_samples": int(bad)}
