"""`lock.json`: one job at a time trains a run folder.

The lock file names its owner (host, pid and the pid's start time, job id and restart count,
a random token, the run's `stale_s`, which `spt status` judges it by) and carries a heartbeat
that the owner refreshes every few seconds (at most LOCK_REFRESH_MAX_S apart). It is created with O_EXCL, so of two jobs starting on one folder at
the same moment exactly one gets it. An owner that is a live process on this host (the same
pid, started at the same moment: a reused pid is not mistaken for it) is never taken over. A
lock is taken over at once when its owner is a dead process on this host, or when it belongs to
an earlier incarnation of this very SLURM job (a lower SLURM_RESTART_COUNT: a requeue after the
node died). Any other owner (another host, or another step of this allocation) is judged by
watching its heartbeat, since its clock, or the file server's, may differ from this host's: when
the heartbeat moves it is a live job and is refused; it is taken over once it stood still for
`stale_s`, or sooner, once it is older than `stale_s` by this host's clock and stood still for
two refresh intervals and a poll (a live owner whose clock runs slow refreshes meanwhile).
Takeovers are serialised by a second O_EXCL file, `.lock.takeover`, and happen only when the lock
is still the one judged stale (token and heartbeat), so two jobs that find the same stale lock
cannot both win (the loser sees the winner's new lock and is refused). The takeover file names
its taker as the lock does; one left by a taker that died mid-takeover is removed by the next
job when the taker is a dead process on this host, or (a taker elsewhere) once the file stood
unchanged for two refresh intervals and a poll while that job watched it: never by comparing
its mtime (the file server's clock) with this host's clock. An owner whose lock was taken over (it
was frozen longer than `stale_s`) learns it at its next refresh; a lock file that cannot be read
for a moment (a takeover being written) is judged at the next refresh.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

from spt_dist.config.schema import LOCK_REFRESH_MAX_S
from spt_dist.errors import SptError
from spt_dist.io import write_text_atomic

LOCK = "lock.json"
TAKEOVER = ".lock.takeover"


class RunFolderBusy(SptError, RuntimeError):
    """Another live job holds the run folder."""


class LockPending(RuntimeError):
    """`acquire(within_s=...)` is still waiting on a lock that may be a dead job's; call it again."""


class LockWaitStopped(RuntimeError):
    """`acquire(stop=...)` ended its wait on another job's lock because `stop()` answered (the
    answer is the message: what asked to stop); the lock was not taken."""


class LockLost(RuntimeError):
    """This job's lock was taken over while it ran (it was frozen for longer than stale_s)."""


def _job_id() -> Optional[str]:
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")


def _restarts() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def _stat(pid: int) -> Optional[list]:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> Optional[int]:
    """When `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), or None where
    that cannot be read (not Linux, or no such process)."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (ValueError, IndexError):
        return None


def _alive(pid: int, started: Optional[int]) -> bool:
    """`pid` is a live process (not a zombie), and the same one as when the lock was taken (its
    start time)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False
    now = process_start(pid)
    return started is None or now is None or now == started


LIVE, DEAD, WATCH = "live", "dead", "watch"


def first_look(owner: Dict[str, Any]) -> Tuple[str, str]:
    """What one look at a lock's owner tells, before any watching: (LIVE, "") for a live process
    on this host (never taken over, however old its heartbeat), (DEAD, why) for a gone process on
    this host or an earlier run of this SLURM job (taken over at once), else (WATCH, ""): an
    owner elsewhere, judged by its heartbeat."""
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int):
        if _alive(pid, owner.get("pid_start")):
            return LIVE, ""
        return DEAD, f"its owner, pid {pid} on this host, is gone"
    if owner.get("job") and owner.get("job") == _job_id() and int(owner.get("restarts") or 0) < _restarts():
        return DEAD, (f"it belongs to an earlier run of this job ({owner['job']}, restart "
                      f"{int(owner.get('restarts') or 0)}; this is restart {_restarts()})")
    return WATCH, ""


def heartbeat_age(owner: Dict[str, Any], path: Path) -> float:
    """How old the owner's heartbeat is by this host's clock (a lock without one: its file time)."""
    beat = owner.get("heartbeat")
    if not beat:
        try:
            beat = path.stat().st_mtime
        except OSError:
            return 0.0
    return time.time() - float(beat)


def seconds(value: Any) -> Optional[float]:
    """`value` as a positive number of seconds (a lock's or a config's stale_s), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    return float(value) if ok else None


def held_at_a_look(run_dir: Path, stale_s: Union[float, Callable[[], float]]) -> bool:
    """Whether a job holds `run_dir`'s lock, judged at one look by the rule a waiting job starts
    from: a live process here holds it, a dead one does not; an owner elsewhere holds it while
    its heartbeat is younger than `stale_s` by this host's clock (an older one is what a waiting
    job would watch: whether its job still runs is for the caller to find out otherwise).
    `stale_s` is the one the lock records (its run's), else the one given; a callable is asked
    only for a lock that records none. A lock file being written (unreadable for a moment) is
    not counted."""
    path = Path(run_dir) / LOCK
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(owner, dict):
        return False
    kind, _ = first_look(owner)
    if kind != WATCH:
        return kind == LIVE
    limit = seconds(owner.get("stale_s")) or float(stale_s() if callable(stale_s) else stale_s)
    return heartbeat_age(owner, path) < limit


class RunLock:
    def __init__(self, run_dir: Path, stale_s: float = 120.0, refresh_s: float = LOCK_REFRESH_MAX_S) -> None:
        """`refresh_s`: the longest interval between two refreshes of a live owner."""
        self.path = Path(run_dir) / LOCK
        self.stale_s = stale_s
        self.poll_s = min(1.0, stale_s / 10)
        self.confirm_s = min(stale_s, 2 * refresh_s + self.poll_s)  # an old heartbeat watched this long first
        self.token = uuid.uuid4().hex
        self.held = False
        self._watch: Optional[Tuple[Tuple[Any, ...], float]] = None  # a watched owner's beat, and since when
        self._mutex_watch: Optional[Tuple[Tuple[Any, ...], float]] = None  # another's takeover file, and since when
        self._lost_since: Optional[float] = None  # when this job began losing takeover races

    def _owner(self) -> Dict[str, Any]:
        return {"token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                "pid_start": process_start(os.getpid()), "job": _job_id(), "restarts": _restarts(),
                "started": time.time(), "heartbeat": time.time(), "stale_s": self.stale_s}

    def _read(self) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or garbage: judged by its age

    def why_stale(self, owner: Dict[str, Any]) -> Optional[str]:
        """Why the lock `owner` describes may be taken over now, or None while it is live or
        still being watched (an owner elsewhere: judged by how long its heartbeat stood still
        while this lock watched it)."""
        kind, why = first_look(owner)
        if kind == LIVE:
            return None
        if kind == DEAD:
            return why
        return self._still(owner)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._owner(), f)
        self.held = True
        return True

    def acquire(self, on_wait: Optional[Callable[[str], None]] = None, within_s: Optional[float] = None,
                stop: Optional[Callable[[], str]] = None) -> Optional[str]:
        """Take the lock; returns the reason when a stale lock was taken over. Raises
        RunFolderBusy naming the live owner. A lock held elsewhere is watched first (`on_wait`
        gets one line saying whom for and how long at most). With `within_s`, LockPending is
        raised when that much time passed waiting; the next call goes on with the same watch.
        `stop` is asked before every poll of a wait and before any takeover: a non-empty answer
        (say, a signal's name) ends the wait with LockWaitStopped, the lock left as it is (a stop
        never ends in a taken lock; only a free lock found at a wait's first look is taken)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        give_up = None if within_s is None else time.monotonic() + within_s
        first = True
        while True:
            if not first or self._watch is not None:  # a wait goes on (this call's, or a call before)
                self._stop_asked(stop)
            first = False
            if self._create():
                self._forget()
                return None
            owner = self._read()
            if owner is None:
                continue  # released in between
            reason = self.why_stale(owner)
            if reason is not None:
                self._stop_asked(stop)
                if self._take_over(owner):
                    self._forget()
                    return reason
                self._lost_race(give_up)
                continue
            if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
                raise RunFolderBusy(self._busy(owner))  # a live process here
            self._wait_on(owner, on_wait)
            pause = self.poll_s
            if give_up is not None:
                pause = min(pause, give_up - time.monotonic())
                if pause <= 0:
                    raise LockPending(str(self.path))
            time.sleep(pause)

    def _stop_asked(self, stop: Optional[Callable[[], str]]) -> None:
        asked = stop() if stop is not None else ""
        if asked:
            self._forget()
            raise LockWaitStopped(asked)

    def _forget(self) -> None:
        self._watch = self._mutex_watch = self._lost_since = None

    def _lost_race(self, give_up: Optional[float]) -> None:
        """Another job's takeover file stands: retried shortly, for as long as a file left by a
        dead taker takes to be judged so, and a few seconds more."""
        now = time.monotonic()
        if self._lost_since is None:
            self._lost_since = now
        if now - self._lost_since > self.confirm_s + 5:
            self._forget()
            raise RunFolderBusy(f"{self.path}: could not take the lock (another job keeps taking it)")
        if give_up is not None and now >= give_up:
            raise LockPending(str(self.path))
        time.sleep(0.1)

    @staticmethod
    def _beat(owner: Dict[str, Any]) -> Tuple[Any, ...]:
        return owner.get("token"), owner.get("heartbeat")

    def _age(self, owner: Dict[str, Any]) -> float:
        return heartbeat_age(owner, self.path)

    @staticmethod
    def _job(owner: Dict[str, Any]) -> str:
        """"job J, " for an owner started by a scheduler; nothing for one started by hand."""
        return f"job {owner['job']}, " if owner.get("job") else ""

    def _busy(self, owner: Dict[str, Any], moved: str = "") -> str:
        return (f"{self.path.parent} is being trained by another job (pid {owner.get('pid')} on "
                f"{owner.get('host')}, {self._job(owner)}heartbeat {self._age(owner):.0f} s ago{moved}); "
                f"wait for it to end, or cancel it; a lock whose heartbeat stops is taken over after "
                f"{self.stale_s:.0f} s")

    def _wait_on(self, owner: Dict[str, Any], on_wait: Optional[Callable[[str], None]]) -> None:
        """Watch a lock held elsewhere: RunFolderBusy as soon as its heartbeat moves."""
        beat, now = self._beat(owner), time.monotonic()
        if self._watch is None:
            self._watch = (beat, now)
            if on_wait is not None:
                most = min(self.stale_s, max(self.confirm_s, self.stale_s - self._age(owner))) + self.poll_s
                on_wait(f"{self.path.parent} is locked by pid {owner.get('pid')} on {owner.get('host')} "
                        f"({self._job(owner)}heartbeat {self._age(owner):.0f} s ago): waiting at most {most:.0f} s; "
                        f"taken over if its heartbeat stays still, refused if it moves")
        elif self._watch[0] != beat:
            waited = now - self._watch[1]
            self._watch = None
            raise RunFolderBusy(self._busy(owner, f", and it moved while this job waited {waited:.0f} s"))

    def _still(self, owner: Dict[str, Any]) -> Optional[str]:
        """A watched lock whose heartbeat stood still for stale_s by this host's clock (the
        owner's clock may run ahead), or for confirm_s once it is older than stale_s (the
        owner's clock, or the file server's, may run slow: a live owner refreshes meanwhile)."""
        if self._watch is None or self._watch[0] != self._beat(owner):
            return None
        still, age = time.monotonic() - self._watch[1], self._age(owner)
        if still > self.stale_s:
            return (f"its heartbeat stayed still for {still:.0f} s while this job waited (stale after "
                    f"{self.stale_s:.0f} s)")
        if age > self.stale_s and still > self.confirm_s:
            return (f"its heartbeat is {age:.0f} s old (stale after {self.stale_s:.0f} s) and stayed still for "
                    f"{still:.0f} s while this job waited")
        return None

    def _take_over(self, seen: Dict[str, Any]) -> bool:
        mutex = self.path.parent / TAKEOVER
        try:
            fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            self._clear_left_mutex(mutex)
            return False
        self._mutex_watch = None
        with os.fdopen(fd, "w") as f:
            json.dump(self._owner(), f)  # who takes over: judged like a lock's owner should it die here
        try:
            now = self._read()
            if now is not None and self._beat(now) == self._beat(seen) and self._holds_mutex(mutex):
                self.path.unlink(missing_ok=True)  # still the lock judged stale: nobody took it meanwhile
            return self._create()
        finally:
            if self._holds_mutex(mutex):
                mutex.unlink(missing_ok=True)

    def _holds_mutex(self, mutex: Path) -> bool:
        try:
            return json.loads(mutex.read_text()).get("token") == self.token
        except (OSError, ValueError, AttributeError):
            return False

    @staticmethod
    def _look(mutex: Path) -> Optional[Tuple[Any, ...]]:
        """A takeover file as it is now (inode, mtime, size, content), or None when gone."""
        try:
            st = mutex.stat()
            return st.st_ino, st.st_mtime_ns, st.st_size, mutex.read_text()
        except FileNotFoundError:
            return None

    def _clear_left_mutex(self, mutex: Path) -> None:
        """Remove another job's takeover file when its taker left it: a dead process on this
        host, or (a taker elsewhere, or one that died before writing its name) a file that
        stood unchanged for confirm_s while this job watched it on this host's clock."""
        seen = self._look(mutex)
        if seen is None:
            self._mutex_watch = None
            return
        try:
            taker = json.loads(seen[3])
        except ValueError:
            taker = {}
        taker = taker if isinstance(taker, dict) else {}
        kind, _ = first_look(taker)
        if kind != WATCH:
            left = kind == DEAD
        else:
            now = time.monotonic()
            if self._mutex_watch is None or self._mutex_watch[0] != seen:
                self._mutex_watch = (seen, now)
            left = now - self._mutex_watch[1] > self.confirm_s
        if left and self._look(mutex) == seen:
            mutex.unlink(missing_ok=True)
            self._mutex_watch = None

    def refresh(self) -> None:
        """Renew the heartbeat; LockLost when someone else holds the lock now."""
        if not self.held:
            return
        owner = self._read()
        if owner == {}:
            return  # unreadable for a moment (being written): judged at the next refresh
        if owner is None or owner.get("token") != self.token:
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
