"""The rendezvous port of a submitted multi-task job, and retries of transient start-up failures.

submitit derives MASTER_PORT from a hash of the job id, so two array tasks on one node can draw
the same port, and nothing checks that a port is free. Here the port is a function of the
numeric SLURM job id (array tasks have consecutive ids, so tasks running side by side get
different ports) and of the attempt number; rank 0 takes the first candidate it can bind and
writes it to `<job folder>/rendezvous/<job id>.<attempt>.json`, which the other tasks read
(submitit's job folder is on a filesystem every node of the job shares). A start-up failure
that is not the run's fault (the port taken between the check and the bind, a peer that could
not connect) is retried, up to ATTEMPTS times, with the next attempt's port.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path
from typing import Optional

BASE, SPAN = 20000, 40000
ATTEMPTS = 3
TRANSIENT = ("EADDRINUSE", "Address already in use", "DistNetworkError", "DistStoreError",
             "Connection reset by peer", "Connection refused")


def candidate_ports(job_id: str, attempt: int, n: int = 16):
    """Ports to try, in order: distinct for consecutive job ids, shifted by the attempt."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    first = int(digits) % SPAN
    for i in range(n):
        yield BASE + (first + attempt * 7919 + i * 104729) % SPAN


def _free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def agree_port(folder: Path, job_id: str, attempt: int, rank: int, timeout_s: float = 300.0) -> int:
    """Rank 0 picks a free candidate and publishes it; the others wait for it."""
    path = Path(folder) / "rendezvous" / f"{job_id}.{attempt}.json"
    if rank == 0:
        port = next((p for p in candidate_ports(job_id, attempt) if _free(p)), None)
        if port is None:
            raise OSError(f"EADDRINUSE: no free rendezvous port among the candidates of job {job_id}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"port": port}))
        os.replace(tmp, path)
        return port
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            return int(json.loads(path.read_text())["port"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
    raise TimeoutError(f"DistStoreError: rank {rank} waited {timeout_s:.0f} s for rank 0's rendezvous port ({path})")


def is_transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(t in text for t in TRANSIENT)


def reset_process_group() -> None:
    """Leave a half-made process group before the next attempt."""
    try:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # nothing to leave, or already broken: the next attempt starts clean
        pass


def job_folder() -> Optional[Path]:
    try:
        import submitit

        return Path(submitit.JobEnvironment().paths.folder)
    except Exception:  # not inside a submitit job
        return None
