"""The run folder lock: exactly one owner, stale locks taken over safely, a lost lock noticed."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spt_dist.io import write_text_atomic
from spt_dist.rundir.lock import (TAKEOVER, LockLost, LockPending, LockWaitStopped, RunFolderBusy, RunLock,
                                  process_start)


def _race(folder: str, start: float, out, stale_s: float = 120.0) -> None:
    while time.time() < start:
        pass
    lock = RunLock(folder, stale_s=stale_s)
    try:
        lock.acquire()
        out.put(os.getpid())
        time.sleep(1.0)  # hold it while the others try
    except RunFolderBusy:
        out.put(None)


@pytest.mark.parametrize("found", ["none", "dead-here", "still-elsewhere"])
def test_many_processes_at_once_exactly_one_owner(tmp_path, found):
    """Every racer finds no lock, a dead owner's lock on this host, or the lock of a job on
    another host whose heartbeat stopped 1 s ago: all of them wait for it, then try to take it over."""
    if found != "none":
        here = found == "dead-here"
        (tmp_path / "lock.json").write_text(json.dumps({"token": "old", "host": socket.gethostname() if here
                                                        else "elsewhere", "pid": 2 ** 22 + 7,
                                                        "heartbeat": time.time() - (0 if here else 1)}))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(str(tmp_path), start, out, 2.0)) for _ in range(8)]
    for p in procs:
        p.start()
    winners = [w for w in (out.get(timeout=30) for _ in procs) if w is not None]
    for p in procs:
        p.join()
    assert len(winners) == 1


def test_live_owner_refuses_with_its_name_and_dead_one_is_taken_over(tmp_path):
    first = RunLock(tmp_path)
    assert first.acquire() is None
    with pytest.raises(RunFolderBusy, match=rf"pid {os.getpid()} on {socket.gethostname()}"):
        RunLock(tmp_path).acquire()  # this very process is alive
    first.release()
    assert not (tmp_path / "lock.json").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": socket.gethostname(), "pid": int(dead),
                                                    "heartbeat": time.time()}))
    reason = RunLock(tmp_path).acquire()
    assert reason == f"its owner, pid {dead} on this host, is gone"


def test_an_old_heartbeat_of_another_host_is_watched_for_two_refreshes_then_taken_over(tmp_path):
    """30 s old by this host's clock (stale after 10 s): the owner's clock may run slow, so the
    lock is watched for two of its refresh intervals (0.5 s here) and a poll (1 s) first."""
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": "elsewhere", "pid": 1,
                                                    "heartbeat": time.time() - 30}))
    said = []
    lock = RunLock(tmp_path, stale_s=10, refresh_s=0.5)
    start = time.monotonic()
    reason = lock.acquire(on_wait=said.append)
    waited = time.monotonic() - start
    assert 2 <= waited < 5, waited
    assert re.fullmatch(r"its heartbeat is 3[2-4] s old \(stale after 10 s\) and stayed still for [234] s while "
                        r"this job waited", reason), reason
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == lock.token
    assert len(said) == 1 and "heartbeat 30 s ago): waiting at most 3 s;" in said[0], said


def test_a_job_killed_on_another_host_moments_ago_is_waited_for_then_taken_over(tmp_path):
    """A requeue onto another node starts 1 s after the killed job's last heartbeat: it waits
    until the heartbeat is stale_s old, saying so once, then takes the lock."""
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": "node-17", "pid": 99, "job": "4242",
                                                    "heartbeat": time.time() - 1}))
    said = []
    lock = RunLock(tmp_path, stale_s=3, refresh_s=0.5)
    start = time.monotonic()
    reason = lock.acquire(on_wait=said.append)
    waited = time.monotonic() - start
    assert 1.7 < waited < 3.5, waited
    assert re.fullmatch(r"its heartbeat is [34] s old \(stale after 3 s\) and stayed still for [23] s while this "
                        r"job waited", reason), reason
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == lock.token
    assert len(said) == 1 and "\n" not in said[0]
    assert re.match(rf"{re.escape(str(tmp_path))} is locked by pid 99 on node-17 \(job 4242, heartbeat [12] s ago\): "
                    rf"waiting at most [12] s; taken over if its heartbeat stays still, refused if it moves$", said[0]), said


def test_a_dead_owner_whose_clock_ran_ahead_is_taken_over_once_still_for_stale_s(tmp_path):
    """Its last heartbeat lies a minute in this host's future: never older than stale_s here, so it
    is taken over once it stood still for stale_s while this job watched."""
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": "node-17", "pid": 99,
                                                    "heartbeat": time.time() + 60}))
    said = []
    lock = RunLock(tmp_path, stale_s=2)
    start = time.monotonic()
    reason = lock.acquire(on_wait=said.append, within_s=8)  # LockPending, not a hang, if never taken
    assert 2 < time.monotonic() - start < 5
    assert re.fullmatch(r"its heartbeat stayed still for [23] s while this job waited \(stale after 2 s\)", reason)
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == lock.token
    assert len(said) == 1 and "heartbeat -60 s ago): waiting at most 2 s;" in said[0], said


class _LiveElsewhere:
    """A job on another host that refreshes its lock's heartbeat every 0.2 s."""

    def __init__(self, folder: Path, job=None, clock_s: float = 0.0, beat: bool = True) -> None:
        """`clock_s`: how far the owner's clock is ahead of this host's (negative: behind)."""
        self.path, self.owner = folder / "lock.json", {"token": "live", "host": "node-17", "pid": 99, "job": job}
        self.clock_s = clock_s
        self.stop = threading.Event()
        if beat:
            self.beat()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def beat(self) -> None:
        write_text_atomic(self.path, json.dumps({**self.owner, "restarts": 0, "heartbeat": time.time() + self.clock_s}))

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.beat()

    def __enter__(self) -> "_LiveElsewhere":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


@pytest.mark.parametrize("job", [None, "4242"], ids=["another-job", "another-step-of-this-allocation"])
def test_a_live_job_on_another_host_is_refused_never_taken_over(tmp_path, monkeypatch, job):
    """Its heartbeat moves while this job waits: refused at once, the lock left alone. With the
    same SLURM job id and restart count it is another step of this allocation: refused too."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with _LiveElsewhere(tmp_path, job):
        start = time.monotonic()
        named = f"job {job}, " if job else ""  # an owner started by hand has no job id to name
        with pytest.raises(RunFolderBusy, match=rf"pid 99 on node-17, {named}heartbeat \d s ago, and it moved "
                                                rf"while this job waited \d s"):
            RunLock(tmp_path, stale_s=2).acquire()
        assert time.monotonic() - start < 2  # refused before the wait could have ended
        assert json.loads((tmp_path / "lock.json").read_text())["token"] == "live"


@pytest.mark.parametrize("clock_s", [-20.0, 60.0], ids=["owner-clock-slow", "owner-clock-ahead"])
def test_a_live_owner_whose_clock_differs_is_refused_never_taken_over(tmp_path, clock_s):
    """Its heartbeats look 20 s old (older than stale_s = 15 s) or a minute in the future by this
    host's clock; they move while this job watches: refused, the lock left alone."""
    with _LiveElsewhere(tmp_path, "7", clock_s=clock_s):
        start = time.monotonic()
        with pytest.raises(RunFolderBusy, match=r"pid 99 on node-17, job 7, heartbeat -?\d+ s ago, and it moved"):
            RunLock(tmp_path, stale_s=15).acquire()
        assert time.monotonic() - start < 3
        assert json.loads((tmp_path / "lock.json").read_text())["token"] == "live"


def test_a_lock_still_being_written_is_not_judged_by_an_old_file_time(tmp_path):
    """An empty lock.json whose mtime (the file server's clock) looks a minute old: its creator
    writes it a moment later and goes on refreshing, so it is refused, not taken over."""
    (tmp_path / "lock.json").write_text("")
    os.utime(tmp_path / "lock.json", (time.time() - 60, time.time() - 60))
    creator = _LiveElsewhere(tmp_path, "7", beat=False)
    with creator:
        with pytest.raises(RunFolderBusy, match=r"pid 99 on node-17, job 7, .*and it moved"):
            RunLock(tmp_path, stale_s=15).acquire()
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == "live"


class _WakesAtTheJudgement(RunLock):
    """The watched owner (frozen, say by SIGSTOP) runs again just as its lock is judged stale:
    its refresh lands between the judgement and the takeover (the same token, a new heartbeat)."""

    def __init__(self, folder: Path, owner: _LiveElsewhere, **kwargs) -> None:
        super().__init__(folder, **kwargs)
        self.owner = owner

    def why_stale(self, owner):
        reason = super().why_stale(owner)
        if reason is not None and not self.owner.thread.is_alive():
            self.owner.beat()
            self.owner.thread.start()
        return reason


def test_an_owner_that_refreshes_after_the_judgement_keeps_its_lock(tmp_path):
    (tmp_path / "lock.json").write_text(json.dumps({"token": "live", "host": "node-17", "pid": 99, "job": "7",
                                                    "heartbeat": time.time() - 30}))
    owner = _LiveElsewhere(tmp_path, "7", beat=False)
    try:
        with pytest.raises(RunFolderBusy, match="and it moved while this job waited"):
            _WakesAtTheJudgement(tmp_path, owner, stale_s=10, refresh_s=0.25).acquire()
        assert owner.thread.is_alive()  # it was judged stale, then refreshed
        assert json.loads((tmp_path / "lock.json").read_text())["token"] == "live"
    finally:
        owner.stop.set()
        if owner.thread.is_alive():
            owner.thread.join()


def test_a_stop_ends_the_wait_without_taking_the_lock(tmp_path):
    """`stop` answers a signal's name once the wait began: LockWaitStopped at the next poll, the
    other job's lock left as it is."""
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": "node-17", "pid": 99,
                                                    "heartbeat": time.time()}))
    asked = []
    start = time.monotonic()
    with pytest.raises(LockWaitStopped, match="^SIGUSR2$"):
        RunLock(tmp_path, stale_s=60).acquire(stop=lambda: asked.append(1) or ("SIGUSR2" if len(asked) > 2 else ""))
    assert len(asked) == 3 and 1.5 < time.monotonic() - start < 4  # one poll a second
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == "x"


def test_a_stop_during_the_sleep_before_a_takeover_ends_the_wait_without_taking_the_lock(tmp_path):
    """A dead job's old lock elsewhere is judged stale 2 s into the wait (poll 1 s, confirm 2 s); the
    stop that arrives 1.5 s in, during the sleep before that poll, ends the wait first."""
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": "node-17", "pid": 99,
                                                    "heartbeat": time.time() - 30}))
    lock = RunLock(tmp_path, stale_s=15, refresh_s=0.5)
    start = time.monotonic()
    with pytest.raises(LockWaitStopped, match="^SIGUSR2$"):
        lock.acquire(stop=lambda: "SIGUSR2" if time.monotonic() - start > 1.5 else "")
    assert not lock.held and json.loads((tmp_path / "lock.json").read_text())["token"] == "x"


def _stale_lock_and_takeover_file(folder: Path, taker: dict, mtime: float) -> None:
    """A dead job's lock on another host, and another job's takeover file whose mtime (the file
    server's clock) is `mtime`."""
    (folder / "lock.json").write_text(json.dumps({"token": "x", "host": "node-17", "pid": 99,
                                                  "heartbeat": time.time() - 300}))
    (folder / TAKEOVER).write_text(json.dumps(taker))
    os.utime(folder / TAKEOVER, (mtime, mtime))


def test_a_live_takers_takeover_file_is_left_alone_however_old_its_mtime(tmp_path):
    """The taker is a live process here, its file 40 s old by a file server's slow clock: the
    waiter keeps out of the takeover (LockPending, the file and the old lock as they were)."""
    taker = {"token": "t", "host": socket.gethostname(), "pid": os.getpid(), "pid_start": process_start(os.getpid())}
    _stale_lock_and_takeover_file(tmp_path, taker, time.time() - 40)
    lock = RunLock(tmp_path, stale_s=3, refresh_s=0.5)
    with pytest.raises(LockPending):
        lock.acquire(within_s=3)
    assert json.loads((tmp_path / TAKEOVER).read_text()) == taker and not lock.held
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == "x"


def test_a_takeover_file_left_elsewhere_is_removed_once_it_stood_still_while_watched(tmp_path):
    """The taker on another host died mid-takeover; its file's mtime lies a minute ahead (the file
    server's clock): it is removed after standing unchanged for confirm_s on this host's clock."""
    _stale_lock_and_takeover_file(tmp_path, {"token": "t", "host": "node-18", "pid": 5}, time.time() + 60)
    lock = RunLock(tmp_path, stale_s=3, refresh_s=0.5)  # poll 0.3 s, confirm 1.3 s
    start = time.monotonic()
    reason = lock.acquire()
    waited = time.monotonic() - start
    assert re.fullmatch(r"its heartbeat is 30\d s old \(stale after 3 s\) and stayed still for \d s while this job "
                        r"waited", reason), reason
    assert 2 * lock.confirm_s <= waited < 2 * lock.confirm_s + 2, waited  # the lock's watch, then the file's
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == lock.token
    assert not (tmp_path / TAKEOVER).exists()


def test_a_takeover_file_of_a_dead_taker_here_is_removed_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    _stale_lock_and_takeover_file(tmp_path, {"token": "t", "host": socket.gethostname(), "pid": int(dead)},
                                  time.time())
    lock = RunLock(tmp_path, stale_s=3, refresh_s=0.5)
    start = time.monotonic()
    assert lock.acquire() is not None
    assert time.monotonic() - start < lock.confirm_s + 1  # the lock's watch only
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == lock.token


def test_an_earlier_run_of_the_same_slurm_job_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued once
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": "node-17", "pid": 99, "job": "4242",
                                                    "heartbeat": time.time()}))
    assert "earlier run of this job (4242, restart 0; this is restart 1)" in RunLock(tmp_path).acquire()


HOLD = ("import sys, time; from spt_dist.rundir.lock import RunLock; lock = RunLock(sys.argv[1]); "
        "lock.acquire(); print('held', flush=True); time.sleep(60)")


@pytest.mark.parametrize("restarts", ["0", "3"])
def test_a_live_owner_of_the_same_job_on_this_host_is_never_taken_over(tmp_path, monkeypatch, restarts):
    """Two `srun spt train` steps of one allocation: same SLURM job id, both on this host, the first
    alive. The second is refused, whatever its restart count says and however old the heartbeat."""
    job_env = {**os.environ, "SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "0"}
    owner = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], env=job_env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        held = json.loads((tmp_path / "lock.json").read_text())
        assert held["pid"] == owner.pid and held["job"] == "77"
        held["heartbeat"] = time.time() - 3600  # an hour old: still a live process here
        (tmp_path / "lock.json").write_text(json.dumps(held))
        monkeypatch.setenv("SLURM_JOB_ID", "77")
        monkeypatch.setenv("SLURM_RESTART_COUNT", restarts)
        with pytest.raises(RunFolderBusy, match=rf"pid {owner.pid} on {socket.gethostname()}, job 77"):
            RunLock(tmp_path, stale_s=10).acquire()
        assert json.loads((tmp_path / "lock.json").read_text())["token"] == held["token"]
        # Once it is gone, its lock is taken over at once, even before its parent reaps it (a zombie).
        os.kill(owner.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while Path(f"/proc/{owner.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.time() < deadline
            time.sleep(0.05)
        assert RunLock(tmp_path).acquire() == f"its owner, pid {owner.pid} on this host, is gone"
    finally:
        owner.kill()
        owner.wait()


def test_a_reused_pid_is_not_taken_for_the_owner(tmp_path):
    """The owner's pid now belongs to another process (this one): its start time tells them apart."""
    mine = process_start(os.getpid())
    assert mine is not None
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": socket.gethostname(), "pid": os.getpid(),
                                                    "pid_start": mine - 1, "heartbeat": time.time()}))
    assert RunLock(tmp_path).acquire() == f"its owner, pid {os.getpid()} on this host, is gone"


def test_refresh_survives_a_lock_file_read_half_written(tmp_path):
    mine = RunLock(tmp_path, stale_s=30)
    mine.acquire()
    whole = (tmp_path / "lock.json").read_text()
    for moment in ("", whole[: len(whole) // 2]):  # empty, then cut in the middle
        (tmp_path / "lock.json").write_text(moment)
        mine.refresh()  # no LockLost: judged at the next refresh
        assert mine.held
    (tmp_path / "lock.json").write_text(whole)
    mine.refresh()
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == mine.token
    (tmp_path / "lock.json").unlink()
    with pytest.raises(LockLost):
        mine.refresh()


def test_refresh_notices_a_takeover(tmp_path):
    mine = RunLock(tmp_path, stale_s=5)
    mine.acquire()
    mine.refresh()
    beat = json.loads((tmp_path / "lock.json").read_text())["heartbeat"]
    assert time.time() - beat < 5
    (tmp_path / "lock.json").write_text(json.dumps({"token": "someone else", "host": "h", "pid": 1,
                                                    "heartbeat": time.time()}))
    with pytest.raises(LockLost, match="taken over by h:1"):
        mine.refresh()
    mine.release()
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == "someone else"  # not ours to remove


def _claim_rank(rank: int, root: str, out, claim_run_dir, stop_after_s=None, stop_ranks=(0, 1)) -> None:
    """One of two gloo ranks whose collective timeout (2 s) is shorter than rank 0's wait (~11 s);
    with `stop_after_s`, a SIGTERM is taken to have arrived on `stop_ranks` that long after the
    wait began."""
    import io
    from contextlib import redirect_stderr
    from datetime import timedelta

    import torch
    import torch.distributed as tdist

    from spt_dist.config import load_config
    from spt_dist.distributed import Comm, DistInfo

    tdist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=2,
                             timeout=timedelta(seconds=2))
    cfg = load_config(None, ["run.lock_stale_s=15", "distributed.timeout_s=2"])
    run = Path(root) / "run"
    tdist.barrier()
    if rank == 0:  # a killed job's lock from another host, 11 s after its last heartbeat
        run.mkdir()
        (run / "lock.json").write_text(json.dumps({"token": "x", "host": "node-17", "pid": 99, "job": "1",
                                                   "heartbeat": time.time() - 11}))
    said = io.StringIO()
    start = time.monotonic()
    stop = (lambda: "") if stop_after_s is None or rank not in stop_ranks else (
        lambda: "SIGTERM" if time.monotonic() - start > stop_after_s else "")
    try:
        with redirect_stderr(said), claim_run_dir(cfg, run, DistInfo(rank, 2, 0, torch.device("cpu"), "gloo",
                                                                     Comm(rank, 2)), stop):
            held = json.loads((run / "lock.json").read_text())["host"]
        out.put((rank, held, time.monotonic() - start, said.getvalue()))
    except Exception as exc:  # reported to the test
        out.put((rank, repr(exc), time.monotonic() - start, said.getvalue()))


def _fork_two_ranks(root: str, stop_after_s, stop_ranks, out) -> None:
    from spt_dist.engine.claim import claim_run_dir  # imported once here, not in each forked rank

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_claim_rank, args=(rank, root, out, claim_run_dir, stop_after_s,
                                                                        stop_ranks)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


def _claim_two_ranks(tmp_path: Path, stop_after_s=None, stop_ranks=(0, 1)) -> list:
    """The two ranks are forked from a fresh (spawned) process: a test process may hold a default
    process group already (a run trained in-process), which a fork would inherit."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    parent = ctx.Process(target=_fork_two_ranks, args=(str(tmp_path), stop_after_s, stop_ranks, out))
    parent.start()
    got = sorted(out.get(timeout=120) for _ in range(2))
    parent.join()
    return got


def test_a_multi_rank_job_waits_for_the_lock_longer_than_its_collective_timeout(tmp_path):
    """Rank 0 waits ~11 s on a killed job's lock from another host (two 5 s refresh intervals and
    a poll: it looks stale after 4 s); rank 1 waits in broadcasts of 2 s timeout meanwhile: both
    go on once the lock is taken over (the schema's 15 s minimum kept)."""
    got = _claim_two_ranks(tmp_path)
    assert [held for _, held, _, _ in got] == [socket.gethostname()] * 2, got
    assert all(10.5 < waited < 16 for _, _, waited, _ in got), got
    run = tmp_path / "run"
    lines = got[0][3].splitlines()
    assert re.match(rf"spt: {re.escape(str(run))} is locked by pid 99 on node-17 \(job 1, heartbeat 1[12] s ago\): "
                    rf"waiting at most 1[23] s;", lines[0]), lines
    assert re.match(rf"spt: took over the lock of {re.escape(str(run))}: its heartbeat is 2[2-5] s old \(stale after "
                    rf"15 s\) and stayed still for 1[1-4] s", lines[1]), lines
    assert got[1][3] == "" and not (run / "lock.json").exists()


@pytest.mark.parametrize("stop_ranks", [(0, 1), (1,)], ids=["every-rank", "rank-1-alone"])
def test_a_stop_during_a_multi_rank_wait_ends_it_on_every_rank(tmp_path, stop_ranks):
    """A stop arrives 1 s into the wait, on every rank or on rank 1 alone: every rank raises
    LockWaitStopped within a poll or two (the ranks exchange their stop flags once a poll), the
    other job's lock left as it is."""
    got = _claim_two_ranks(tmp_path, stop_after_s=1.0, stop_ranks=stop_ranks)
    assert [what for _, what, _, _ in got] == ["LockWaitStopped('SIGTERM')"] * 2, got
    assert all(waited < 4 for _, _, waited, _ in got), got
    run = tmp_path / "run"
    assert got[0][3].splitlines()[1] == (f"spt: SIGTERM arrived while this job waited for the lock of {run}: stopped "
                                         f"before training, the lock left to its owner"), got
    assert json.loads((run / "lock.json").read_text())["token"] == "x" and sorted(os.listdir(run)) == ["lock.json"]


def test_the_refusal_names_a_job_only_for_an_owner_a_scheduler_started(tmp_path):
    """A live owner here started by hand (no job id) is named by pid and host alone, one a
    scheduler started by its job id as well."""
    for job, named in ((None, f"(pid {os.getpid()} on {socket.gethostname()}, heartbeat "),
                       ("4242", f"(pid {os.getpid()} on {socket.gethostname()}, job 4242, heartbeat ")):
        (tmp_path / "lock.json").write_text(json.dumps({
            "token": "other", "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": process_start(os.getpid()), "job": job, "heartbeat": time.time()}))
        with pytest.raises(RunFolderBusy) as info:
            RunLock(tmp_path).acquire()
        assert named in str(info.value) and "None" not in str(info.value), str(info.value)
