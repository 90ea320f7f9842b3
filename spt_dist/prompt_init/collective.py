"""The few collectives the prototype init needs; all of them are no-ops in a single process.

Every call is made by every rank in the same order. A rank that fails locally reports it
through `agree` instead of raising alone, so no rank is left waiting in a collective.
"""
from __future__ import annotations

from typing import Any, List, Optional

import torch
import torch.distributed as dist

from spt_dist.errors import SptError


class PromptInitError(SptError, RuntimeError):
    """Prototype init cannot run; raised on every rank with the same message."""


class Comm:
    """rank / world_size of the job and the device collectives run on (CUDA for NCCL)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = int(rank), int(world_size)
        self.active = self.world_size > 1
        self.device = torch.device("cpu")
        if not self.active:
            return
        if not (dist.is_available() and dist.is_initialized()):
            raise PromptInitError(f"world_size={world_size} but torch.distributed is not initialised")
        if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
            raise PromptInitError(f"rank {rank}/{world_size} disagrees with torch.distributed "
                                  f"({dist.get_rank()}/{dist.get_world_size()})")
        if dist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())

    def agree(self, error: Optional[str]) -> None:
        """Raise PromptInitError on every rank if any rank passes an error message."""
        errors: List[Optional[str]] = [error]
        if self.active:
            errors = [None] * self.world_size
            dist.all_gather_object(errors, error)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            if len({e for _, e in failed}) == 1 and len(failed) == self.world_size:
                raise PromptInitError(failed[0][1])
            raise PromptInitError("; ".join(f"rank {r}: {e}" for r, e in failed))

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank `src`'s tensor on every rank (same shape and dtype required everywhere)."""
        if not self.active:
            return tensor
        buf = tensor.to(self.device).contiguous()
        dist.broadcast(buf, src)
        return buf.to(tensor.device)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src)
        return box[0]

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if not self.active:
            return tensor
        buf = tensor.to(self.device).contiguous()
        dist.all_reduce(buf, {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return buf.to(tensor.device)

    def all_gather_rows(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        """Every rank's (n_r, ...) tensor, n_r varying by rank: sizes first, pad, gather, trim."""
        if not self.active:
            return [tensor]
        sizes = torch.zeros(self.world_size, dtype=torch.int64, device=self.device)
        sizes[self.rank] = tensor.shape[0]
        sizes = self.all_reduce(sizes).tolist()
        if max(sizes) == 0:
            return [tensor[:0] for _ in sizes]
        padded = torch.zeros((max(sizes),) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=self.device)
        padded[: tensor.shape[0]] = tensor.to(self.device)
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(out, padded)
        return [o[:n].to(tensor.device) for o, n in zip(out, sizes)]
