"""`lock.json`: one job at a time trains a run folder.

The lock file names its owner (host, pid, job id, a random token) and carries a heartbeat
that the owner refreshes every few seconds. It is created with O_EXCL, so of two jobs
starting on one folder at the same moment exactly one gets it. A lock is stale, and may be
taken over, when its heartbeat is older than `stale_s`, when its owner is a dead process on
this host, or when it belongs to an earlier incarnation of this very SLURM job (a requeue
after the node died). Takeovers are serialised by a second O_EXCL file, so two jobs that
find the same stale lock cannot both win. An owner whose lock was taken over (it was frozen
longer than `stale_s`) learns it at its next refresh.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Optional

from spt_dist.errors import SptError
from spt_dist.io import write_text_atomic

LOCK = "lock.json"
TAKEOVER = ".lock.takeover"


class RunFolderBusy(SptError, RuntimeError):
    """Another live job holds the run folder."""


class LockLost(RuntimeError):
    """This job's lock was taken over while it ran (it was frozen for longer than stale_s)."""


def _job_id() -> Optional[str]:
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, run_dir: Path, stale_s: float = 120.0) -> None:
        self.path = Path(run_dir) / LOCK
        self.stale_s = stale_s
        self.token = uuid.uuid4().hex
        self.held = False

    def _owner(self) -> Dict[str, Any]:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(), "job": _job_id(),
                "started": time.time(), "heartbeat": time.time()}

    def _read(self) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage: judged by its age

    def why_stale(self, owner: Dict[str, Any]) -> Optional[str]:
        """Why the lock `owner` describes may be taken over, or None while it is live."""
        age = time.time() - float(owner.get("heartbeat") or self._mtime())
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
                and not _alive(owner["pid"]):
            return f"its owner, pid {owner['pid']} on this host, is gone"
        if owner.get("job") and owner.get("job") == _job_id() and owner.get("pid") != os.getpid():
            return f"it belongs to an earlier run of this job ({owner['job']})"
        if age > self.stale_s:
            return f"its heartbeat is {age:.0f} s old (stale after {self.stale_s:.0f} s)"
        return None

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return time.time()

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._owner(), f)
        self.held = True
        return True

    def acquire(self) -> Optional[str]:
        """Take the lock; returns the reason when a stale lock was taken over. Raises
        RunFolderBusy naming the live owner."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            if self._create():
                return None
            owner = self._read()
            if owner is None:
                continue  # released in between
            reason = self.why_stale(owner)
            if reason is None:
                age = time.time() - float(owner.get("heartbeat") or self._mtime())
                raise RunFolderBusy(
                    f"{self.path.parent} is being trained by another job (pid {owner.get('pid')} on "
                    f"{owner.get('host')}, job {owner.get('job')}, heartbeat {age:.0f} s ago); wait for it to "
                    f"end, or cancel it; a lock whose heartbeat stops is taken over after {self.stale_s:.0f} s")
            if self._take_over(owner):
                return reason
            time.sleep(0.1)
        raise RunFolderBusy(f"{self.path}: could not take the lock (another job keeps taking it)")

    def _take_over(self, seen: Dict[str, Any]) -> bool:
        mutex = self.path.parent / TAKEOVER
        try:
            fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - mutex.stat().st_mtime > 30:  # a taker that died mid-takeover
                    mutex.unlink()
            except FileNotFoundError:
                pass
            return False
        os.close(fd)
        try:
            now = self._read()
            if now is not None and now.get("token") == seen.get("token"):
                self.path.unlink(missing_ok=True)
            return self._create()
        finally:
            mutex.unlink(missing_ok=True)

    def refresh(self) -> None:
        """Renew the heartbeat; LockLost when someone else holds the lock now."""
        if not self.held:
            return
        owner = self._read()
        if not owner or owner.get("token") != self.token:
            self.held = False
            raise LockLost(f"{self.path}: the run folder's lock was taken over by "
                           f"{(owner or {}).get('host')}:{(owner or {}).get('pid')}")
        owner["heartbeat"] = time.time()
        write_text_atomic(self.path, json.dumps(owner))

    def release(self) -> None:
        if self.held:
            owner = self._read()
            if owner and owner.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            self.held = False
