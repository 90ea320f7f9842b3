"""Heartbeats: every rank proves it is alive; a rank that stops answering ends the job.

Each rank runs one thread that writes `run_dir/.heartbeat/rank<r>.json` (time, step, pid,
host, the job's token) every `interval` seconds, refreshes the run folder's lock on rank 0,
and reads its peers' files. A process that is frozen (SIGSTOP, a wedged device, a stuck
mount) stops writing; when a peer's newest heartbeat (not its final `done` one) is older than
half of `timeout_s` (so that this fires, naming the rank, before the collectives' own timeout
does), the thread prints which rank stopped answering and ends this process at once (os._exit), so the
launcher ends the job instead of leaving it in a collective. A frozen peer on this host is
killed as well: it can no longer save, and the launcher would otherwise wait for it.

The token, made by rank 0 and broadcast, tells this job's heartbeats from those an earlier
job left in the folder; a peer that has not written one yet gets the same allowance, counted
from the watchdog's start. Each peer's last good heartbeat is kept: a read that fails or finds
a file half written, empty or of another job counts as no news, never as an old heartbeat. A
rank that was stalled itself (a run-folder file system that blocked every writer at once, its
own process stopped) gives its peers a full allowance again once it runs, so a stall that hit
every rank together does not end a healthy job; a peer frozen for good is named an allowance
later.

Only the heartbeat thread is watched. A rank whose main thread is stuck while its other threads
run (a wedged GPU kernel, a read from a hung data mount other than the run folder's) keeps
beating; its peers then wait in the collective until `distributed.timeout_s`, and that
collective's timeout error ends the job, without this watchdog's line naming the rank.

When rank 0 (the lock's owner) ends the job for a frozen peer it releases the run folder's
lock first; when rank 0 is the frozen one, the lock goes with it (taken over once its process is
gone, or after run.lock_stale_s from another host).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from spt_dist.config.schema import LOCK_REFRESH_MAX_S
from spt_dist.io import write_text_atomic
from spt_dist.rundir.lock import LockLost, RunLock

FOLDER = ".heartbeat"


def _exit(code: int) -> None:
    sys.stderr.flush()
    os._exit(code)


class Watchdog:
    def __init__(self, run_dir: Path, rank: int, world_size: int, token: str, timeout_s: float,
                 lock: Optional[RunLock] = None, interval: Optional[float] = None,
                 on_dead: Callable[[int], None] = lambda rank: _exit(1)) -> None:
        self.folder = Path(run_dir) / FOLDER
        self.rank, self.world_size, self.token, self.timeout_s = rank, world_size, token, timeout_s
        self.lock, self.on_dead = lock, on_dead
        self.stale_s = max(3.0, timeout_s / 2)
        self.interval = interval or max(0.5, min(LOCK_REFRESH_MAX_S, self.stale_s / 6))
        self.step = 0
        self.phase = "setup"
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started = time.time()
        self._last: Dict[int, Dict] = {}  # each peer's last good heartbeat of this job
        self._checked = self._started  # when this rank last judged its peers
        self._grace_from = 0.0  # after this rank itself stalled: its peers' silence counts from here

    def start(self) -> "Watchdog":
        self.folder.mkdir(parents=True, exist_ok=True)
        self._beat()
        self._thread = threading.Thread(target=self._run, name="spt-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating; the last heartbeat says `done`, so peers still finishing do not take
        this rank's silence for a freeze."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.phase = "done"
        try:
            self._beat()
        except OSError:
            pass

    def _beat(self) -> None:
        write_text_atomic(self.folder / f"rank{self.rank}.json", json.dumps(
            {"token": self.token, "time": time.time(), "step": self.step, "phase": self.phase,
             "pid": os.getpid(), "host": socket.gethostname()}))

    def _peer(self, rank: int) -> Optional[Dict]:
        """The peer's newest heartbeat of this job: the file's when it reads whole and newer,
        else the last good one (None before the first)."""
        try:
            beat = json.loads((self.folder / f"rank{rank}.json").read_text())
            good = isinstance(beat, dict) and beat.get("token") == self.token and float(beat["time"]) > 0
        except (OSError, ValueError, KeyError, TypeError):
            good = False
        last = self._last.get(rank)
        if good and (last is None or float(beat["time"]) >= float(last["time"])):
            self._last[rank] = last = beat
        return last

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._beat()
            except OSError:
                pass  # a slow or full disk: the peers' judgement is what counts
            try:  # apart from the beat: a failed beat must not leave the lock to look abandoned
                if self.lock is not None:
                    self.lock.refresh()
            except LockLost as exc:
                print(f"spt: rank {self.rank}: {exc}; stopping, another job trains this run folder now",
                      file=sys.stderr, flush=True)
                self.on_dead(-1)
                return
            except OSError:
                pass  # the lock's next refresh tries again; other jobs wait lock_stale_s before taking it
            self._check_peers()

    def _check_peers(self) -> None:
        now = time.time()
        if now - self._checked > max(3 * self.interval, self.stale_s / 2):
            # This rank was stalled itself (a file system that blocked every writer, a stopped
            # process): its peers were as likely blocked too, so they get a full allowance from
            # now; a peer that is truly frozen is still named stale_s later.
            self._grace_from = now
        self._checked = now
        for r in range(self.world_size):
            if r == self.rank:
                continue
            beat = self._peer(r)
            if beat and beat.get("phase") == "done":
                continue
            last = max(beat["time"] if beat else self._started, self._grace_from)
            if now - last <= self.stale_s:
                continue
            where = (f"last heartbeat {now - last:.0f} s ago at step {beat['step']} ({beat['phase']}), "
                     f"pid {beat['pid']} on {beat['host']}") if beat else "no heartbeat since the job started"
            print(f"spt: rank {r} stopped answering ({where}; distributed.timeout_s={self.timeout_s:g}); "
                  f"rank {self.rank} ends the job", file=sys.stderr, flush=True)
            if beat and beat.get("host") == socket.gethostname():
                try:
                    os.kill(int(beat["pid"]), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            if self.lock is not None:
                try:
                    self.lock.release()  # nobody writes to the folder once this rank is gone
                except OSError:
                    pass
            self.on_dead(r)
            return
