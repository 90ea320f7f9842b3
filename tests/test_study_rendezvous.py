"""Rendezvous ports of tasks side by side never collide; a transient start-up failure is retried
on another port, and when the attempts are spent the task ends with one actionable line."""
from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time

import pytest

from engine_helpers import ROOT
from spt_dist.study.rendezvous import (ATTEMPTS, StartupError, agree_port, candidate_ports, is_transient,
                                       pick_port, port_key)


def test_the_job_number_is_read_from_every_id_format():
    assert port_key("3111_10", {"SLURM_JOB_ID": "3125", "SLURM_ARRAY_JOB_ID": "3111",
                                "SLURM_ARRAY_TASK_ID": "10"}) == 3125  # SLURM's own per-task id first
    by_array = port_key("", {"SLURM_ARRAY_JOB_ID": "3111", "SLURM_ARRAY_TASK_ID": "10"})
    assert by_array == port_key("3111_10", {}) == 3111 * 1000 + 10
    assert port_key("3111_0", {}) != port_key("3111_10", {})  # not the digits run together
    assert port_key("4242", {}) == 4242
    # a local job that inherited a SLURM shell's variables goes by its own (process) id
    assert port_key("", {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "777", "SLURM_JOB_ID": "9"}) == 777
    with pytest.raises(ValueError, match="job id"):
        port_key("abc", {})


def test_jobs_side_by_side_get_distinct_first_ports():
    # SLURM gives every running job and array task its own job id; consecutive ones side by side
    firsts = [next(candidate_ports(port_key("", {"SLURM_JOB_ID": str(1_000_000 + i)}), 0)) for i in range(1000)]
    assert len(set(firsts)) == 1000
    # read from "A_i" alone: 40 arrays of 100 tasks, submitted one after another
    firsts = [next(candidate_ports(port_key(f"{a}_{i}", {}), 0)) for a in range(3100, 3140) for i in range(100)]
    assert len(set(firsts)) == 4000
    assert next(candidate_ports(123, 1)) != next(candidate_ports(123, 0))  # a retry moves


def _pick_and_hold(key, where, barrier, out, release):
    barrier.wait()  # every process chooses at the same moment
    try:
        port = pick_port(key, 0, where)
        with socket.socket() as s:  # and binds it, as torch's store does
            s.bind(("", port))
            s.listen()
            out.put(port)
            release.wait(30)
    except Exception as exc:  # reported by the test
        out.put(f"{type(exc).__name__}: {exc}")


def test_processes_starting_at_the_same_moment_never_share_a_port(tmp_path):
    """16 processes with the SAME job number (the worst case: every first candidate alike) pick
    at once; each gets its own port and binds it."""
    ctx = multiprocessing.get_context("fork")
    n = 16
    barrier, out, release = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_pick_and_hold, args=(31337, tmp_path, barrier, out, release)) for _ in range(n)]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in range(n)]
    release.set()
    for p in procs:
        p.join(30)
    assert all(isinstance(g, int) for g in got), got
    assert len(set(got)) == n


def test_a_port_another_process_listens_on_is_skipped(tmp_path):
    first = next(candidate_ports(777, 0))
    with socket.socket() as busy:
        busy.bind(("", first))
        busy.listen()
        assert pick_port(777, 0, tmp_path) != first


def test_tasks_of_one_job_agree(tmp_path):
    """20 jobs x 2 ranks rendezvous at once: each job agrees inside itself, no two jobs share a port."""
    ports, errors = {}, []

    def task(job: str, rank: int) -> None:
        try:
            ports[(job, rank)] = agree_port(tmp_path / job, job, port_key(job, {}), 0, rank, timeout_s=30)
        except Exception as exc:  # collected and reported below
            errors.append(exc)

    threads = [threading.Thread(target=task, args=(f"5000_{j}", r)) for j in range(20) for r in (1, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    per_job = {job: {ports[(job, 0)], ports[(job, 1)]} for job, _ in ports}
    assert all(len(v) == 1 for v in per_job.values())
    assert len({next(iter(v)) for v in per_job.values()}) == 20


def test_transient_failures_are_recognised():
    assert is_transient(RuntimeError("[c10d] The server socket has failed to listen on any local network "
                                     "address. port: 29500, useIpv6: false, code: -98, name: EADDRINUSE"))
    assert not is_transient(ValueError("config key 'optim.lr' = -1 is out of range"))


def test_a_single_task_job_whose_port_is_taken_starts_again_on_another(tmp_path, monkeypatch):
    """A one-task job on submitit's local executor: its first port is taken between the choice and
    torch's bind (the real EADDRINUSE of torch's store); the task retries on another port."""
    from spt_dist.config import load_config
    from spt_dist.study import make_executor
    from spt_dist.study.task import TrainTask

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=r", "launch.cluster=local",
                             f"launch.folder={tmp_path / 'jobs'}", "launch.tasks_per_node=1", "launch.timeout_min=5"])
    job = make_executor(cfg.launch).submit(TrainTask(cfg, "test_study_rendezvous:_grabbed_port_train"))
    deadline = time.time() + 120
    while not job.done() and time.time() < deadline:
        time.sleep(0.5)
    result = job.result()
    assert result["status"] == "finished"
    (first, error), (second, ok) = result["tries"]
    assert "EADDRINUSE" in error and ok == "bound"
    assert first != second and 20000 <= second < 60000
    assert "attempt 2 of" in job.stderr()


def test_spent_attempts_end_in_one_actionable_line(tmp_path):
    from spt_dist.config import load_config
    from spt_dist.study.task import TrainTask

    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=r"])
    with pytest.raises(StartupError) as info:
        TrainTask(cfg, "test_study_rendezvous:_always_taken")()
    line = str(info.value)
    assert "\n" not in line and f"after {ATTEMPTS} attempts" in line and "submit it again" in line
    assert "EADDRINUSE" in line
    with pytest.raises(ValueError, match="not transient"):
        TrainTask(cfg, "test_study_rendezvous:_bad_train")()


_TRIES: list = []


def _grabbed_port_train(cfg, run_dir):
    """Attempt 1: another process takes MASTER_PORT first; then torch's store binds it."""
    from datetime import timedelta

    from torch.distributed import TCPStore

    port = int(os.environ["MASTER_PORT"])
    grabbed = socket.socket()
    if not _TRIES:
        grabbed.bind(("", port))
        grabbed.listen()
    try:
        TCPStore("127.0.0.1", port, 1, True, timeout=timedelta(seconds=10))
        _TRIES.append((port, "bound"))
    except Exception as exc:
        _TRIES.append((port, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        grabbed.close()
    return {"status": "finished", "tries": _TRIES}


def _always_taken(cfg, run_dir):
    raise RuntimeError("DistNetworkError: The server socket has failed to bind: EADDRINUSE")


def _bad_train(cfg, run_dir):
    raise ValueError("not transient")
