"""The rendezvous port of a submitted job (one task or several), and retries of transient
start-up failures.

submitit derives MASTER_PORT from a hash of the job id, so two jobs on one node can draw the
same port, and nothing checks that a port is free. Here the first candidate port is a function
of the job's number (`port_key`: SLURM's own per-task job id, which every job or array task
running at the same time has to itself and which consecutive array tasks have consecutive;
else the array id and task id; under the local executor submitit's local job id), and later
candidates and attempts step away from it. Candidates lie from BASE up to the start of the
kernel's ephemeral range (ip_local_port_range, where outgoing connections and NCCL take ports
at random). The task that opens the port (rank 0) takes the first candidate that it can bind
and that no other task of this user on this node reserved in the last HOLD_S seconds
(`pick_port`: the reservations live in a node-wide folder that does not follow $TMPDIR, chosen
under a file lock, so two tasks starting at the same moment never choose the same port; where
the folder or the lock cannot be had, binding alone decides). A job of several
tasks writes the choice to `<job folder>/rendezvous/<job id>.<restart>.<attempt>.json`, which
the other tasks read (submitit's job folder is on a filesystem every node of the job shares);
they follow rank 0 to a later attempt when it publishes one (`agree_port`).

A start-up failure that is not the run's fault (the port taken between the choice and the bind
by a process outside spt, a peer that could not connect, no free candidate, rank 0's choice not
published in time) is a RendezvousError, raised only here and by init_distributed; it is
retried, up to ATTEMPTS times, each attempt on other ports; when the attempts are spent the task
fails with one line saying so.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping, Optional, Tuple

from spt_dist.errors import RendezvousError, SptError

BASE = 20000
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
ATTEMPTS = 3
HOLD_S = 300.0           # a reservation keeps a port from other tasks until its owner has bound it
SETTLE_S = 2.0           # how long the other tasks watch for rank 0's next attempt once its port answers
NODE_DIRS = ("/tmp", "/dev/shm")  # node-wide, whatever $TMPDIR says; /tmp first: logind may empty /dev/shm


class StartupError(SptError):
    """A run that could not start (its rendezvous failed) after every attempt."""


def port_key(job_id: str = "", environ: Mapping[str, str] = os.environ) -> int:
    """The job's number: SLURM_JOB_ID (one per running job or array task), else
    SLURM_ARRAY_JOB_ID and SLURM_ARRAY_TASK_ID, else `job_id` as submitit writes it ("A_i" for
    task i of array A, "J" for a job, a process id for the local executor, whose jobs may have
    inherited the SLURM variables of the shell that started them)."""
    local = environ.get("SUBMITIT_EXECUTOR") == "local"
    if not local and str(environ.get("SLURM_JOB_ID", "")).isdigit():
        return int(environ["SLURM_JOB_ID"])
    array, task = str(environ.get("SLURM_ARRAY_JOB_ID", "")), str(environ.get("SLURM_ARRAY_TASK_ID", ""))
    if local or not (array.isdigit() and task.isdigit()):
        m = re.fullmatch(r"\s*(\d+)(?:_(\d+))?\s*", str(job_id or environ.get("SUBMITIT_LOCAL_JOB_ID", "")))
        if m is None:
            raise ValueError(f"cannot read a job number from job id {job_id!r}")
        if m.group(2) is None:
            return int(m.group(1))
        array, task = m.group(1), m.group(2)
    # tasks of one array apart by their task id, arrays submitted one after another by 1000
    return int(array) * 1000 + int(task)


def port_span(path: Path = EPHEMERAL) -> int:
    """How many ports candidates spread over: BASE up to the first ephemeral port (32768 where
    the kernel's range cannot be read; 40000 ports where that range starts below BASE + 4096)."""
    try:
        low = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low - BASE if low - BASE >= 4096 else 40000


def candidate_ports(key: int, attempt: int, n: int = 16, span: Optional[int] = None) -> Iterator[int]:
    """Ports to try, in order: distinct first ports for keys less than `span` (port_span()) apart;
    every attempt starts elsewhere."""
    span = span or port_span()
    for i in range(n):
        yield BASE + (key + attempt * 7919 + i * 104729) % span


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reserved(path: Path, now: float) -> bool:
    try:
        held = json.loads(path.read_text())
        return now - float(held["time"]) < HOLD_S and _alive(int(held["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def reservations_dir() -> Optional[Path]:
    """This user's reservations folder, the same for every job on the node ($TMPDIR may be a
    job's own): /tmp/spt-rendezvous-<uid>, else under /dev/shm; None where neither is writable."""
    for root in NODE_DIRS:
        if os.access(root, os.W_OK | os.X_OK):
            return Path(root) / f"spt-rendezvous-{os.getuid()}"
    return None


def _lock(where: Optional[Path]):
    """The reservations folder's lock, held; None where there is no folder of this user's, or
    no lock (flock fails with ENOLCK on some network filesystems): binding alone decides then."""
    if where is None:
        return None
    lock = None
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = where.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return None  # not ours: trust nothing in it
        lock = open(where / ".lock", "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        return lock
    except OSError:
        if lock is not None:
            lock.close()
        return None


def pick_port(key: int, attempt: int, where: Optional[Path] = None) -> int:
    """A candidate port that can be bound now and that no other task here reserved; reserved
    for this process. Without the reservations folder or its lock: the first bindable candidate."""
    where = Path(where) if where is not None else reservations_dir()
    lock = _lock(where)
    try:
        now = time.time()
        for port in candidate_ports(key, attempt):
            if (lock is None or not _reserved(where / str(port), now)) and _bindable(port):
                if lock is not None:
                    try:
                        (where / str(port)).write_text(json.dumps({"pid": os.getpid(), "time": now}))
                    except OSError:
                        pass  # unreserved, still free now
                return port
    finally:
        if lock is not None:
            lock.close()
    raise RendezvousError(f"no free rendezvous port among the candidates of job number {key} (attempt {attempt})")


def _published(folder: Path, job_id: str, restart: str, attempt: int) -> Optional[int]:
    try:
        return int(json.loads((Path(folder) / "rendezvous" / f"{job_id}.{restart}.{attempt}.json").read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def agree_port(folder: Path, job_id: str, key: int, attempt: int, rank: int, timeout_s: float = 300.0,
               restart: str = "0", host: Optional[str] = None) -> Tuple[int, int]:
    """(port, attempt): rank 0 picks a free port for `attempt` and publishes it; the other tasks
    wait for the newest attempt rank 0 published from `attempt` on. With `host` (rank 0's
    address) they wait until that port accepts connections and no newer attempt followed within
    SETTLE_S: rank 0 publishes the next attempt within moments of a failed bind, and a port that
    accepts connections may be the very process that took it."""
    if rank == 0:
        path = Path(folder) / "rendezvous" / f"{job_id}.{restart}.{attempt}.json"
        port = pick_port(key, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"port": port}))
        os.replace(tmp, path)
        return port, attempt
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        newest = [(a, p) for a in range(attempt, ATTEMPTS) for p in [_published(folder, job_id, restart, a)]
                  if p is not None]
        if newest:
            attempt, port = newest[-1]
            if host is None:
                return port, attempt
            if _accepts(host, port):
                settle = min(deadline, time.time() + SETTLE_S)
                while attempt + 1 < ATTEMPTS and time.time() < settle \
                        and _published(folder, job_id, restart, attempt + 1) is None:
                    time.sleep(0.1)
                if attempt + 1 >= ATTEMPTS or _published(folder, job_id, restart, attempt + 1) is None:
                    return port, attempt
                continue  # rank 0 moved on: follow it
        time.sleep(0.2)
    raise RendezvousError(f"rank {rank} waited {timeout_s:.0f} s for rank 0's rendezvous port "
                          f"({Path(folder) / 'rendezvous'}, attempt {attempt})")


def job_port(env, attempt: int, timeout_s: float) -> Tuple[int, int]:
    """(MASTER_PORT, the attempt it belongs to) for the task `env` (a submitit JobEnvironment)
    belongs to, from `attempt` on (the other tasks of a job follow rank 0 to a later attempt)."""
    key = port_key(str(env.job_id))
    if env.num_tasks == 1:
        return pick_port(key, attempt), attempt
    return agree_port(job_folder(), str(env.job_id), key, attempt, env.global_rank, timeout_s,
                      os.environ.get("SLURM_RESTART_COUNT", "0"), os.environ.get("MASTER_ADDR"))


def is_transient(exc: BaseException) -> bool:
    """A failure of the rendezvous itself (RendezvousError, raised only by it), whatever its text:
    a tracker or a data read that mentions a refused connection is the run's own failure."""
    return isinstance(exc, RendezvousError)


def gave_up(exc: BaseException, ports) -> StartupError:
    """The one line a task ends with when every attempt failed at start-up."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    tried = ", ".join(str(p) for p in ports) or "none"
    host = socket.gethostname()
    return StartupError(
        f"the run could not start on {host} after {ATTEMPTS} attempts (rendezvous ports tried: {tried}; last: "
        f"{type(exc).__name__}: {first}); nothing was trained: submit it again (`spt study run` does); if it "
        f"recurs on this node of a SLURM cluster, keep jobs off it (--sbatch exclude={host})")


def process_group_exists() -> bool:
    if "torch.distributed" not in sys.modules:
        return False  # nothing made one
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def reset_process_group() -> None:
    """Leave a half-made process group before the next attempt (the caller never calls it on a
    group that existed before its first attempt: an earlier run's in this process, which
    DeepSpeed's cached groups still refer to)."""
    if "torch.distributed" not in sys.modules:
        return  # nothing made one
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
