"""The one layer over torch.distributed: joining the job, seeding, and every collective.

Ranks come from RANK/WORLD_SIZE/LOCAL_RANK (torchrun, deepspeed, submitit's exported
environment) or SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (plain srun). One collective timeout
(`timeout_s`) holds for every process group of the job, DeepSpeed's included, so a dead or
frozen peer ends the run instead of hanging it.

`Comm` carries the collectives; each is a no-op in a single process and is called by every
rank in the same order. A rank that fails locally reports it through `agree` instead of
raising alone, so no rank is left waiting in a collective.
"""
from __future__ import annotations

import os
import random
import subprocess
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, List, Optional, Tuple, Type, TypeVar

import numpy as np
import torch
import torch.distributed as tdist

from spt_dist.errors import RendezvousError, SptError

T = TypeVar("T")


class DistributedSetupError(SptError, RuntimeError):
    """The job cannot form its process group as configured (e.g. NCCL without a GPU)."""


class Comm:
    """Collectives of a job of `world_size` ranks seen from `rank`, on the default group.

    Tensors travel on the device the backend needs (CUDA for NCCL, CPU for gloo) and come
    back on the device they came from.
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank, self.world_size = int(rank), int(world_size)
        self.active = self.world_size > 1
        self.device = torch.device("cpu")
        if not self.active:
            return
        if not (tdist.is_available() and tdist.is_initialized()):
            raise DistributedSetupError(f"world_size={world_size} but torch.distributed is not initialised")
        if tdist.get_world_size() != self.world_size or tdist.get_rank() != self.rank:
            raise DistributedSetupError(f"rank {rank}/{world_size} disagrees with torch.distributed "
                                        f"({tdist.get_rank()}/{tdist.get_world_size()})")
        if tdist.get_backend() == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())

    @classmethod
    def current(cls) -> "Comm":
        """The job this process is part of (one rank when no process group exists)."""
        if tdist.is_available() and tdist.is_initialized():
            return cls(tdist.get_rank(), tdist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- agreeing on failures ----------------------------------------------------------------
    def agree(self, error: Optional[str], kind: Type[Exception] = SptError) -> None:
        """Raise `kind` on every rank if any rank passes an error message."""
        errors: List[Optional[str]] = self.all_gather_object(error)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            if len({e for _, e in failed}) == 1 and len(failed) == self.world_size:
                raise kind(failed[0][1])
            raise kind("; ".join(f"rank {r}: {e}" for r, e in failed))

    def agreed(self, fn: Callable[..., T], *args: Any, kind: Type[Exception] = SptError) -> T:
        """Run fn on every rank; if it fails on any, raise the same `kind` everywhere. Input
        errors (ValueError, SptError) speak for themselves; anything else names its type."""
        result, failure = None, None
        try:
            result = fn(*args)
        except Exception as exc:  # reported to every rank, re-raised below
            failure = exc
        message = None if failure is None else (
            str(failure) if isinstance(failure, (ValueError, SptError)) else f"{type(failure).__name__}: {failure}")
        try:
            self.agree(message, kind)
        except kind as err:
            if kind is SptError and isinstance(failure, SptError):
                raise failure  # this rank's own input error, with its type
            raise err from failure
        return result  # type: ignore[return-value]

    def on_main(self, fn: Callable[..., T], *args: Any, same: Tuple[Type[Exception], ...] = ()) -> Optional[T]:
        """Run fn on rank 0 only (its result there, None elsewhere) and agree on the outcome, so
        that no rank waits in a later collective for a rank 0 that failed alone: rank 0 raises
        its own exception, every other rank the same type when it is one of `same` (a full disk
        is DiskFullError, exit code 2, on every rank), else SptError naming it. A barrier too."""
        result, failure = None, None
        if self.rank == 0:
            try:
                result = fn(*args)
            except Exception as exc:  # told to every rank, re-raised below
                failure = exc
        told = self.broadcast_object(None if failure is None else (type(failure).__name__, str(failure)))
        if failure is not None:
            raise failure
        if told is not None:
            raise told_failure(told, same)
        return result

    # -- collectives -------------------------------------------------------------------------
    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if not self.active:
            return tensor
        buf = tensor.to(self.device).contiguous()
        tdist.all_reduce(buf, {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX}[op])
        return buf.to(tensor.device)

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any rank (a collective decision)."""
        return bool(self.all_reduce(torch.tensor([1.0 if flag else 0.0])).item() > 0)

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank `src`'s tensor on every rank (same shape and dtype required everywhere)."""
        if not self.active:
            return tensor
        buf = tensor.to(self.device).contiguous()
        tdist.broadcast(buf, src)
        return buf.to(tensor.device)

    def broadcast_int(self, value: int, src: int = 0) -> int:
        return int(self.broadcast(torch.tensor([value], dtype=torch.long), src).item())

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.active:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src)
        return box[0]

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every rank's picklable `obj`, in rank order."""
        if not self.active:
            return [obj]
        out: List[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def all_gather_rows(self, tensor: torch.Tensor) -> List[torch.Tensor]:
        """Every rank's (n_r, ...) tensor, n_r varying by rank: sizes first, pad, gather, trim."""
        if not self.active:
            return [tensor]
        sizes = torch.zeros(self.world_size, dtype=torch.int64)
        sizes[self.rank] = tensor.shape[0]
        sizes = self.all_reduce(sizes).tolist()
        if max(sizes) == 0:
            return [tensor[:0] for _ in sizes]
        padded = torch.zeros((max(sizes),) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=self.device)
        padded[: tensor.shape[0]] = tensor.to(self.device)
        out = [torch.empty_like(padded) for _ in range(self.world_size)]
        tdist.all_gather(out, padded)
        return [o[:n].to(tensor.device) for o, n in zip(out, sizes)]

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    comm: Comm = field(default_factory=Comm, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def single_process(device: str | torch.device = "cpu") -> DistInfo:
    """A one-rank job without any process group."""
    return DistInfo(0, 1, 0, torch.device(device), "none")


def told_failure(told: Tuple[str, str], same: Tuple[Type[Exception], ...] = ()) -> Exception:
    """What a rank raises for rank 0's failure, told as (its type's name, its message): that type
    when it is one of `same` (DiskFullError: exit code 2 on every rank), else SptError naming it."""
    kind = next((k for k in same if k.__name__ == told[0]), None)
    return kind(told[1]) if kind else SptError(f"rank 0 failed: {told[0]}: {told[1]}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _slurm_master() -> str:
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodes:
        return "127.0.0.1"
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                             check=True, timeout=30).stdout.split()
        return out[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return nodes.split(",")[0]


def launched_world_size() -> int:
    """The number of ranks the launcher started this job with (1 without a launcher), read from
    the environment before any rendezvous: what init_distributed will join."""
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        return int(env.get("SLURM_NTASKS", "1"))
    return int(env.get("WORLD_SIZE", "1")) if "RANK" in env else 1


def _export_env() -> bool:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from whichever launcher started us.

    Returns whether this is a plain single process, which gets an in-memory store of its own
    instead of MASTER_* variables (those would leak into every process it starts, a submitted
    job or a subprocess, and point them at this process's port) and instead of a port picked,
    closed and bound again (another process can take it in between: EADDRINUSE when many runs
    start on one node at once) or a file store (flock, which some network file systems lack).
    """
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", _slurm_master())
        # Derive the port from the job id so every task of a job agrees without talking; below
        # 32768, where the kernel's ephemeral ports (outgoing connections) usually begin.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 12000))
    env.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it
    if "RANK" not in env:
        return True
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    return False


def import_deepspeed() -> Any:
    """`import deepspeed`, without the optional `import mlflow` of its autotuner (which nothing
    here runs): with mlflow installed that import alone costs every rank about 3 s at start-up.
    mlflow stays importable afterwards (run.loggers=[mlflow] imports it when it logs)."""
    import sys

    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    blocked = "mlflow" not in sys.modules
    if blocked:
        sys.modules["mlflow"] = None  # type: ignore[assignment]  # `import mlflow` raises ImportError
    try:
        import deepspeed
    finally:
        if blocked and sys.modules.get("mlflow", 0) is None:
            del sys.modules["mlflow"]
    return deepspeed


def _skip_shm_compile() -> None:
    """DeepSpeed's CPU backend compiles a shared-memory all-reduce op (~80 s of g++) on first use.

    That op only serves `inference_all_reduce`; training uses the process group's all_reduce.
    Marking it incompatible makes DeepSpeed skip the build; gloo does all the communication.
    """
    import_deepspeed().ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _default_timeout(timeout: timedelta) -> None:
    """Every process group created later without a timeout (DeepSpeed creates its own) takes
    `timeout` instead of torch's 10-30 minute default."""
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = timeout
    if isinstance(getattr(c10d, "default_pg_nccl_timeout", None), timedelta):
        c10d.default_pg_nccl_timeout = timeout


def resolve_backend(backend: str) -> str:
    """`auto` -> nccl with CUDA, gloo without; nccl without CUDA is an error naming the key."""
    cuda = torch.cuda.is_available()
    if backend == "auto":
        return "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise DistributedSetupError("config key 'distributed.backend' = 'nccl' needs CUDA GPUs, and this machine "
                                    "has none; allowed here: auto, gloo")
    return backend


def init_distributed(backend: str = "auto", timeout_s: int = 300, deepspeed: bool = True) -> DistInfo:
    """Join (or create) the process group, and DeepSpeed's comm layer; idempotent."""
    backend = resolve_backend(backend)
    single = _export_env()
    rank, world = (0, 1) if single else (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=timeout_s)
    _default_timeout(timeout)
    if not tdist.is_initialized():
        try:
            store = {"store": tdist.HashStore()} if single else {}
            tdist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timeout, **store)
        except (RuntimeError, OSError) as exc:  # torch's DistNetworkError / DistStoreError, a refused connection
            raise RendezvousError(f"{type(exc).__name__}: {exc}") from exc
    if deepspeed:
        if not cuda:
            _skip_shm_compile()
        import_deepspeed().init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout)
    rank, world = tdist.get_rank(), tdist.get_world_size()
    return DistInfo(rank, world, local_rank, device, backend, Comm(rank, world))
