"""Exact top-1 over a split: every sample is seen by exactly one rank; counts are summed.

The counts stay on the device during the pass and are read back once, after the all-reduce:
no host sync per batch (batches are copied to the device without waiting). `evaluate_many` scores
several models sharing one pass over the split (a pack's members)."""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

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
    was_training = model.training
    model.eval()
    try:
        return evaluate_many(lambda images: [model(images, **forward)], 1, batches, device, dtype, lockstep, comm)[0]
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_many(logits_of: Callable[[torch.Tensor], List[torch.Tensor]], width: int,
                  batches: Iterable[Tuple[torch.Tensor, torch.Tensor, Any]], device: torch.device,
                  dtype: torch.dtype, lockstep: bool = False, comm: Optional[Comm] = None) -> List[Dict[str, float]]:
    """`evaluate` of `width` models in one pass over the split (a pack's members): `logits_of`
    returns each model's (B, C) logits of a batch; the models are in eval mode already."""
    comm = comm or Comm.current()
    stats = torch.zeros(width, 3, dtype=torch.float64, device=device)  # per model: correct, total, summed loss
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
            logits_of(images)  # join the parameter gathers; contributes nothing
            continue
        for row, logits in zip(stats, logits_of(images)):
            logits = logits.float()
            row[0] += (logits.argmax(dim=1) == labels).sum()
            row[1] += labels.numel()
            row[2] += nn.functional.cross_entropy(logits, labels, reduction="sum")
    bad = torch.full((width, 1), float(getattr(batches, "bad_samples", 0)), dtype=torch.float64)  # this rank's
    reduced = comm.all_reduce(torch.cat([stats.cpu(), bad], dim=1)).tolist()
    out = []
    for correct, total, loss, bad in reduced:
        if total == 0:
            raise RuntimeError("the evaluation split is empty on every rank")
        out.append({"top1": 100.0 * correct / total, "correct": int(correct), "total": int(total),
                    "loss": loss / total, "bad_samples": int(bad)})
    return out
