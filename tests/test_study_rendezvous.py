"""Rendezvous ports of tasks side by side never collide; a transient start-up failure is retried."""
from __future__ import annotations

import socket
import threading

import pytest

from spt_dist.study.rendezvous import agree_port, candidate_ports, is_transient


def test_array_tasks_get_distinct_ports():
    # SLURM gives every array task its own consecutive job id; a thousand side by side.
    firsts = [next(candidate_ports(str(1_000_000 + i), 0)) for i in range(1000)]
    assert len(set(firsts)) == 1000
    assert next(candidate_ports("123", 1)) != next(candidate_ports("123", 0))  # a retry moves


def test_many_tasks_agreeing_at_the_same_moment(tmp_path):
    """20 jobs x 2 ranks rendezvous at once: every job agrees inside itself, no two jobs share a
    port, and each port could be bound when it was chosen."""
    ports, errors = {}, []

    def task(job: str, rank: int) -> None:
        try:
            ports[(job, rank)] = agree_port(tmp_path / job, job, 0, rank, timeout_s=30)
        except Exception as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=task, args=(str(5000 + j), r)) for j in range(20) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    per_job = {job: {ports[(job, 0)], ports[(job, 1)]} for job, _ in ports}
    assert all(len(v) == 1 for v in per_job.values())
    assert len({next(iter(v)) for v in per_job.values()}) == 20


def test_a_taken_port_is_skipped(tmp_path):
    first = next(candidate_ports("777", 0))
    with socket.socket() as busy:
        busy.bind(("", first))
        busy.listen()
        assert agree_port(tmp_path, "777", 0, 0) != first


def test_transient_failures_are_recognised():
    assert is_transient(RuntimeError("[c10d] The server socket has failed to listen on any local network "
                                     "address. port: 29500, useIpv6: false, code: -98, name: EADDRINUSE"))
    assert not is_transient(ValueError("config key 'optim.lr' = -1 is out of range"))


def test_a_transient_start_up_failure_is_retried_by_the_task(tmp_path, monkeypatch):
    """TrainTask with a train function that fails at start-up once, as a taken port does."""
    from spt_dist.config import load_config
    from spt_dist.study.task import TrainTask

    calls = tmp_path / "calls"
    monkeypatch.setenv("SPT_TEST_CALLS", str(calls))
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=r"])
    result = TrainTask(cfg, "test_study_rendezvous:_flaky_train")()
    assert result == {"status": "finished", "attempts": 2}
    with pytest.raises(ValueError, match="not transient"):
        TrainTask(cfg, "test_study_rendezvous:_bad_train")()


def _flaky_train(cfg, run_dir):
    import os
    from pathlib import Path

    calls = Path(os.environ["SPT_TEST_CALLS"])
    n = int(calls.read_text()) + 1 if calls.exists() else 1
    calls.write_text(str(n))
    if n == 1:
        raise RuntimeError("DistNetworkError: The server socket has failed to bind: EADDRINUSE")
    return {"status": "finished", "attempts": n}


def _bad_train(cfg, run_dir):
    raise ValueError("not transient")
