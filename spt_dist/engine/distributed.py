"""Process group setup for every launcher: single process, torchrun, the deepspeed launcher, SLURM.

Ranks come from RANK/WORLD_SIZE/LOCAL_RANK (torchrun, deepspeed, submitit's exported
environment) or SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (plain srun). The collective timeout
is cfg.distributed.timeout_s, so a dead peer ends the run instead of hanging it.
"""
from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import torch
import torch.distributed as tdist

from spt_dist.config.schema import Config


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _export_env() -> Optional[str]:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from whichever launcher started us.

    Returns the init_method for a plain single process, which gets a private TCP store
    instead of MASTER_* variables: those would leak into every process it starts (a
    submitted job, a subprocess) and point them at this process's port.
    """
    env = os.environ
    if "RANK" not in env and "SLURM_PROCID" in env:
        env["RANK"] = env["SLURM_PROCID"]
        env["WORLD_SIZE"] = env.get("SLURM_NTASKS", "1")
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        env.setdefault("MASTER_ADDR", _slurm_master())
        # Derive the port from the job id so every task of a job agrees without talking.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
    env.setdefault("LOCAL_RANK", "0")  # DeepSpeed's engine reads it
    if "RANK" not in env:
        return f"tcp://127.0.0.1:{_free_port()}"
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    return None


def _skip_shm_compile() -> None:
    """DeepSpeed's CPU backend compiles a shared-memory all-reduce op (~80 s of g++) on first use.

    That op only serves `inference_all_reduce`; training uses the process group's all_reduce.
    Marking it incompatible makes DeepSpeed skip the build; gloo does all the communication.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(cfg: Config) -> DistInfo:
    """Join (or create) the process group and DeepSpeed's comm layer; idempotent."""
    single = _export_env()
    rank, world = (0, 1) if single else (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    local_rank = int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available()
    backend = cfg.distributed.backend
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise RuntimeError("distributed.backend=nccl needs CUDA; use gloo (or auto) on CPU")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        _skip_shm_compile()
    if not tdist.is_initialized():
        tdist.init_process_group(backend=backend, rank=rank, world_size=world, init_method=single,
                                 timeout=timedelta(seconds=cfg.distributed.timeout_s))
    import deepspeed

    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False,
                               timeout=timedelta(seconds=cfg.distributed.timeout_s))
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), local_rank, device, backend)


def _comm_device() -> torch.device:
    # NCCL only reduces CUDA tensors; gloo takes CPU tensors.
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _multi() -> bool:
    return tdist.is_initialized() and tdist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks; returned on the device it came from."""
    if not _multi():
        return values
    t = values.to(_comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t.to(values.device)


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on any rank (a collective decision)."""
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item() > 0)


def barrier() -> None:
    if _multi():
        tdist.barrier()


def broadcast_int(value: int, src: int = 0) -> int:
    if not _multi():
        return value
    t = torch.tensor([value], dtype=torch.long, device=_comm_device())
    tdist.broadcast(t, src=src)
    return int(t.item())
