"""The run folder lock: exactly one owner, stale locks taken over safely, a lost lock noticed."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from spt_dist.rundir.lock import LockLost, RunFolderBusy, RunLock, process_start


def _race(folder: str, start: float, out) -> None:
    while time.time() < start:
        pass
    lock = RunLock(folder)
    try:
        lock.acquire()
        out.put(os.getpid())
        time.sleep(1.0)  # hold it while the others try
    except RunFolderBusy:
        out.put(None)


@pytest.mark.parametrize("stale", [False, True])
def test_many_processes_at_once_exactly_one_owner(tmp_path, stale):
    if stale:  # every racer finds a dead owner's lock and tries to take it over
        (tmp_path / "lock.json").write_text(json.dumps({"token": "old", "host": socket.gethostname(),
                                                        "pid": 2 ** 22 + 7, "heartbeat": time.time()}))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(str(tmp_path), start, out)) for _ in range(8)]
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


def test_stale_heartbeat_of_another_host_is_taken_over(tmp_path):
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": "elsewhere", "pid": 1,
                                                    "heartbeat": time.time() - 30}))
    with pytest.raises(RunFolderBusy, match="heartbeat 30 s ago"):
        RunLock(tmp_path, stale_s=60).acquire()
    assert "heartbeat is 30 s old" in RunLock(tmp_path, stale_s=10).acquire()


def test_an_earlier_run_of_the_same_slurm_job_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued once
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": "node-17", "pid": 99, "job": "4242",
                                                    "heartbeat": time.time()}))
    assert "earlier run of this job (4242, restart 0; this is restart 1)" in RunLock(tmp_path).acquire()


def test_another_step_of_the_same_allocation_on_another_node_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    (tmp_path / "lock.json").write_text(json.dumps({"token": "x", "host": "node-17", "pid": 99, "job": "4242",
                                                    "restarts": 0, "heartbeat": time.time()}))
    with pytest.raises(RunFolderBusy, match="pid 99 on node-17, job 4242"):
        RunLock(tmp_path).acquire()


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
