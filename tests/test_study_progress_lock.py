"""A study run counts as running while a job holds its folder's lock, judged by the lock's own
first-look rule (spt_dist.rundir.lock.held_at_a_look) with the run's run.lock_stale_s."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from spt_dist.config import load_config, to_yaml
from spt_dist.rundir.lock import process_start
from spt_dist.study.progress import lock_stale_s, run_state


def _locked(run_dir, **owner) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "lock.json").write_text(json.dumps({"token": "x", **owner}))


@pytest.mark.parametrize("stale_s, state", [(None, "pending"), (300, "running"), (150, "pending")])
def test_an_owner_elsewhere_counts_while_its_heartbeat_is_younger_than_the_runs_lock_stale_s(tmp_path, stale_s, state):
    """A heartbeat 200 s old by this host's clock: running under lock_stale_s 300 (the run's
    config.yaml), not under 150 nor under the default 120 (no config.yaml)."""
    run = tmp_path / "run"
    _locked(run, host="node-17", pid=99, heartbeat=time.time() - 200)
    if stale_s is not None:
        (run / "config.yaml").write_text(to_yaml(load_config(overrides=[f"run.lock_stale_s={stale_s}"])))
    assert lock_stale_s(run) == (stale_s or 120)
    assert run_state(run, []).state == state


def test_an_owner_here_counts_by_its_process_not_its_heartbeat(tmp_path):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    _locked(tmp_path / "gone", host=socket.gethostname(), pid=dead, heartbeat=time.time())
    assert run_state(tmp_path / "gone", []).state == "pending"  # a fresh heartbeat, its process gone
    _locked(tmp_path / "live", host=socket.gethostname(), pid=os.getpid(), pid_start=process_start(os.getpid()),
            heartbeat=time.time() - 3600)
    assert run_state(tmp_path / "live", []).state == "running"  # an hour-old heartbeat, its process alive


@pytest.mark.parametrize("recorded, state", [(300, "running"), (150, "pending")])
def test_a_lock_that_records_its_runs_stale_s_is_judged_by_it_without_reading_the_config(tmp_path, recorded,
                                                                                          state, monkeypatch):
    """The lock records the run's lock_stale_s (RunLock writes it): a driver pass judges the
    200 s old heartbeat by it and never reads config.yaml (here one that says otherwise)."""
    from spt_dist.study import progress

    assert json.loads(_taken(tmp_path / "own", 42.0))["stale_s"] == 42.0
    run = tmp_path / "run"
    _locked(run, host="node-17", pid=99, heartbeat=time.time() - 200, stale_s=recorded)
    (run / "config.yaml").write_text(to_yaml(load_config(overrides=["run.lock_stale_s=1000"])))
    monkeypatch.setattr(progress, "lock_stale_s", lambda _: pytest.fail("read the config"))
    assert run_state(run, []).state == state


def _taken(run_dir, stale_s: float) -> str:
    from spt_dist.rundir.lock import RunLock

    run_dir.mkdir(parents=True)
    lock = RunLock(run_dir, stale_s=stale_s)
    lock.acquire()
    try:
        return (run_dir / "lock.json").read_text()
    finally:
        lock.release()
