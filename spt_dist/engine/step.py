"""One training step and the per-step agreement of all ranks.

`train_step` runs forward, backward and DeepSpeed's step for one micro-batch and returns the
loss as a tensor: nothing is read back to the host per micro-step (the batch is copied to the
device without waiting for the copy, from the loader's pinned memory; the loss is summed on
the device). `StepVote` gathers what the ranks must agree on at every optimizer step in ONE
all-reduce with named slots: the summed loss and micro-batch count, per stop reason how many
ranks saw it, and the bad samples skipped so far (a pack: one loss slot per member), so every rank stops at the same step. Its
read-back is the one host sync of an optimizer step that this code adds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
from torch.nn import functional as F

from spt_dist.distributed import Comm

from .checkpoint import TrainRng

STOP_REASONS = ("SIGTERM", "SIGUSR2", "SIGINT", "max_steps")
SLOTS = ("loss_sum", "micro_batches", *STOP_REASONS, "bad_samples")


def train_step(engine: Any, inputs: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype, rng: TrainRng,
               label_smoothing: float, **forward: Any) -> torch.Tensor:
    """Forward, backward, step (an optimizer step at accumulation boundaries); the loss, detached.

    `inputs`: images, or what `forward` tells the model they are (pooled=True: cached features)."""
    with rng.active():  # prompt dropout draws from the run's own stream
        logits = engine(inputs.to(engine.device, dtype, non_blocking=True), **forward)
    loss = F.cross_entropy(logits.float(), labels.to(engine.device, non_blocking=True),
                           label_smoothing=label_smoothing)
    engine.backward(loss)
    engine.step()
    return loss.detach()


@dataclass
class Agreed:
    loss: float                 # mean training loss of this optimizer step over all ranks
    stop: Optional[str]         # the first stop reason any rank saw, or None
    bad_samples: int            # training samples skipped in this invocation, all ranks
    losses: List[float] = field(default_factory=list)  # per pack member (engine/pack.py); [loss] alone


class StepVote:
    """`add` takes the loss of a micro-batch: a scalar, or one loss per pack member (all the
    same width); the vote carries them all in its one all-reduce."""

    def __init__(self, comm: Comm, device: torch.device) -> None:
        self.comm, self.device = comm, device
        self._loss = torch.zeros((), dtype=torch.float64, device=device)
        self._micro = 0

    def add(self, loss: torch.Tensor) -> None:
        self._loss = self._loss + loss.to(torch.float64)
        self._micro += 1

    def vote(self, signal_name: str, max_steps_reached: bool, bad_samples: int) -> Agreed:
        values = dict.fromkeys(SLOTS, 0.0)
        values.update(micro_batches=self._micro, max_steps=float(max_steps_reached), bad_samples=bad_samples)
        if signal_name in STOP_REASONS:
            values[signal_name] = 1.0
        width = self._loss.numel()
        rest = torch.tensor([values[s] for s in SLOTS[1:]], dtype=torch.float64, device=self.device)
        reduced = self.comm.all_reduce(torch.cat([self._loss.reshape(-1), rest])).tolist()
        total = dict(zip(SLOTS[1:], reduced[width:]))
        self._loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._micro = 0
        stop = next((r for r in STOP_REASONS if total[r]), None)
        losses = [v / max(1.0, total["micro_batches"]) for v in reduced[:width]]
        return Agreed(losses[0], stop, int(total["bad_samples"]), losses)
