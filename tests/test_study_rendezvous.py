"""Rendezvous ports of tasks side by side never collide; a transient start-up failure is retried
on another port, and when the attempts are spent the task ends with one actionable line."""
from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import socket
import tempfile
import threading
import time

import pytest

from engine_helpers import ROOT
from spt_dist.errors import RendezvousError
from spt_dist.rundir.loggers import LoggerError
from spt_dist.study.rendezvous import (ATTEMPTS, BASE, StartupError, agree_port, candidate_ports, is_transient,
                                       pick_port, port_key, port_span, reservations_dir)
from spt_dist.study.task import DIST_ENV, TrainTask


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


def test_candidate_ports_stay_below_the_kernel_s_ephemeral_range(tmp_path):
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    ports = [p for key in range(0, 200_000, 37) for a in range(ATTEMPTS) for p in candidate_ports(key, a)]
    assert min(ports) >= BASE and max(ports) < low
    assert len(set(ports)) > 0.9 * (low - BASE)  # and spread over all of it
    given = tmp_path / "range"
    given.write_text("40000\t60999\n")
    assert port_span(given) == 40000 - BASE
    assert port_span(tmp_path / "absent") == 32768 - BASE  # Linux's default start
    given.write_text("1024 65535\n")  # no room below: the bind check alone protects
    assert port_span(given) == 40000


def _pick_with_own_tmpdir(key, tmpdir, barrier, out, release):
    os.environ["TMPDIR"] = str(tmpdir)  # a job's own temporary folder, as some clusters give each job
    tempfile.tempdir = None
    _pick_and_hold(key, None, barrier, out, release)


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


def _race(target, args_per_process):
    """Start one forked process per args tuple, all released at once by a barrier; each puts
    its pick on a queue and holds it until every pick is in. The picks, in arrival order."""
    ctx = multiprocessing.get_context("fork")
    n = len(args_per_process)
    barrier, out, release = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=target, args=(*args, barrier, out, release)) for args in args_per_process]
    for p in procs:
        p.start()
    got = [out.get(timeout=60) for _ in range(n)]
    release.set()
    for p in procs:
        p.join(30)
    return got


def test_processes_starting_at_the_same_moment_never_share_a_port(tmp_path):
    """16 processes with the SAME job number (the worst case: every first candidate alike) pick
    at once; each gets its own port and binds it."""
    got = _race(_pick_and_hold, [(31337, tmp_path)] * 16)
    assert all(isinstance(g, int) for g in got), got
    assert len(set(got)) == 16


def test_jobs_with_their_own_tmpdir_share_the_node_s_reservations(tmp_path):
    """8 processes, each with its own $TMPDIR, the same job number, picking at once: the
    reservations are node-wide, so each still gets its own port."""
    for i in range(8):
        (tmp_path / str(i)).mkdir()
    got = _race(_pick_with_own_tmpdir, [(41337, tmp_path / str(i)) for i in range(8)])
    assert all(isinstance(g, int) for g in got), got
    assert len(set(got)) == 8
    assert not str(reservations_dir()).startswith(str(tmp_path))


def test_a_lock_that_cannot_be_had_leaves_the_choice_to_binding(tmp_path, monkeypatch):
    """flock fails with ENOLCK where the folder is on a network filesystem (no such filesystem
    here: flock stands in for it); the first bindable candidate is chosen, nothing raised."""
    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    first = next(candidate_ports(4321, 0))
    with socket.socket() as busy:
        busy.bind(("", first))
        busy.listen()
        assert pick_port(4321, 0, tmp_path) == list(candidate_ports(4321, 0))[1]


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
            ports[(job, rank)], attempt = agree_port(tmp_path / job, job, port_key(job, {}), 0, rank, timeout_s=30)
            assert attempt == 0
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


def test_the_other_ranks_follow_rank_0_to_its_next_attempt(tmp_path):
    """Rank 0 publishes attempt 0's port, but another socket binds it before torch's store does
    (EADDRINUSE; the intruder does not answer, as a port held by a process that is not yet
    listening); rank 0 moves to attempt 1. Rank 1, watching while it waits for a port that
    answers, follows it there, and the two stores meet. (An intruder that answers on the port
    can catch rank 1 first: the follow is a best effort, docs/studies.md.)"""
    from datetime import timedelta

    from torch.distributed import TCPStore

    # The stores are kept until both threads are done: a thread's return would otherwise close
    # its store, and rank 0's server could go while rank 1 still reads from it.
    got, errors, stores, intruder = {}, [], [], socket.socket()

    def rank0() -> None:
        try:
            port, _ = agree_port(tmp_path, "77", 8077, 0, 0, timeout_s=30)
            intruder.bind(("", port))  # between the choice and the bind
            try:
                TCPStore("127.0.0.1", port, 2, True, timeout=timedelta(seconds=10))
                raise AssertionError("bound a port another process listens on")
            except RuntimeError as exc:
                got["bind"] = str(exc)
            port, attempt = agree_port(tmp_path, "77", 8077, 1, 0, timeout_s=30)
            store = TCPStore("127.0.0.1", port, 2, True, timeout=timedelta(seconds=20))
            stores.append(store)
            store.set("from0", "x")
            got[0] = (port, attempt, store.get("from1"))
        except Exception as exc:  # reported below
            errors.append(exc)

    def rank1() -> None:
        try:
            port, attempt = agree_port(tmp_path, "77", 8077, 0, 1, timeout_s=30, host="127.0.0.1")
            store = TCPStore("127.0.0.1", port, 2, False, timeout=timedelta(seconds=20))
            stores.append(store)
            store.set("from1", "y")
            got[1] = (port, attempt, store.get("from0"))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=rank1), threading.Thread(target=rank0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    intruder.close()
    assert not errors, errors
    assert "EADDRINUSE" in got["bind"] or "in use" in got["bind"]
    assert got[0][:2] == got[1][:2] and got[0][1] == 1 and (got[0][2], got[1][2]) == (b"y", b"x")


INIT_ON_A_TAKEN_PORT = """
from spt_dist.distributed import init_distributed
from spt_dist.study.rendezvous import is_transient
try:
    init_distributed("gloo", 5, deepspeed=False)
except Exception as exc:
    print(type(exc).__name__, is_transient(exc), exc)
"""


def test_only_the_rendezvous_s_own_failures_are_retried():
    """init_distributed turns torch's failure to form the group into a RendezvousError (a store
    whose port is taken, the real EADDRINUSE; in a fresh process, since a test process may
    hold a group already); a failure elsewhere that mentions a refused connection (a
    tracker's server down) is the run's own."""
    import subprocess
    import sys

    from engine_helpers import env

    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        e = {**env(), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(busy.getsockname()[1])}
        out = subprocess.run([sys.executable, "-c", INIT_ON_A_TAKEN_PORT], cwd=ROOT, env=e, capture_output=True,
                             text=True, timeout=120).stdout
    assert out.startswith("RendezvousError True ") and ("EADDRINUSE" in out or "address already in use" in out), out
    assert not is_transient(LoggerError("config key 'run.loggers': mlflow failed to start: MlflowException: "
                                        "[Errno 111] Connection refused"))
    assert not is_transient(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"))
    assert not is_transient(RuntimeError("EADDRINUSE"))  # the text alone decides nothing
    assert not is_transient(ValueError("config key 'optim.lr' = -1 is out of range"))


def test_a_single_task_job_whose_port_is_taken_starts_again_on_another(tmp_path, monkeypatch):
    """A one-task job on submitit's local executor: its first port is taken between the choice and
    torch's bind (the real EADDRINUSE of torch's store); the task retries on another port."""
    from spt_dist.config import load_config
    from spt_dist.study import make_executor

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
    assert first != second and BASE <= second < BASE + port_span()
    assert "attempt 2 of" in job.stderr()


def test_spent_attempts_end_in_one_actionable_line(tmp_path):
    from spt_dist.config import load_config

    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=r"])
    with pytest.raises(StartupError) as info:
        TrainTask(cfg, "test_study_rendezvous:_always_taken")()
    line = str(info.value)
    assert "\n" not in line and f"after {ATTEMPTS} attempts" in line and "submit it again" in line
    assert "EADDRINUSE" in line
    with pytest.raises(ValueError, match="not transient"):
        TrainTask(cfg, "test_study_rendezvous:_bad_train")()


def test_retries_never_tear_down_a_process_group_an_earlier_run_of_this_process_made(tmp_path):
    """An in-process run's group (which DeepSpeed's cached groups refer to) outlives another
    task's failed start-up attempts in the same process; a half-made group of the attempts'
    own is still left between attempts (the tests above)."""
    import torch.distributed as dist

    from spt_dist.config import load_config
    from spt_dist.distributed import init_distributed

    init_distributed("gloo", 10, deepspeed=False)  # idempotent: an earlier test's group may be here
    world = dist.group.WORLD
    cfg = load_config(None, [f"run.out_dir={tmp_path}", "run.name=r"])
    with pytest.raises(StartupError):
        TrainTask(cfg, "test_study_rendezvous:_always_taken")()
    assert dist.is_initialized() and dist.group.WORLD is world


_TRIES: list = []


def _grabbed_port_train(cfg, run_dir):
    """Attempt 1: another process takes MASTER_PORT first; then torch's store binds it."""
    from spt_dist.distributed import init_distributed
    import torch.distributed as dist

    port = int(os.environ["MASTER_PORT"])
    grabbed = socket.socket()
    if not _TRIES:
        grabbed.bind(("", port))
        grabbed.listen()
    try:
        init_distributed("gloo", 10, deepspeed=False)  # torch's store binds MASTER_PORT
        _TRIES.append((port, "bound"))
        dist.destroy_process_group()
    except Exception as exc:
        _TRIES.append((port, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        grabbed.close()
    return {"status": "finished", "tries": _TRIES}


def _always_taken(cfg, run_dir):
    raise RendezvousError("DistNetworkError: The server socket has failed to bind: EADDRINUSE")


def _bad_train(cfg, run_dir):
    raise ValueError("not transient")


def _submitit_task(monkeypatch, tmp_path, tasks: int = 1, rank: int = 0, job_id: str = "4711"):
    """This process as task `rank` of a `tasks`-task job of submitit's local executor, as its
    environment says (the job itself is not started: the failures below come before training)."""
    for name, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_FOLDER": str(tmp_path / "jobs"),
                        "SUBMITIT_LOCAL_JOB_ID": job_id, "SUBMITIT_LOCAL_NTASKS": str(tasks),
                        "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0",
                        "SUBMITIT_LOCAL_GLOBALID": str(rank), "SUBMITIT_LOCAL_LOCALID": str(rank)}.items():
        monkeypatch.setenv(name, value)
    for name in DIST_ENV:
        # set, then deleted: monkeypatch records a variable only when it is there, and the task
        # exports these into os.environ; so they are removed again after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _cfg(tmp_path, *more):
    from spt_dist.config import load_config

    return load_config(None, [f"run.out_dir={tmp_path}", "run.name=r", *more])


_CALLS: list = []


def _record_call(cfg, run_dir):
    _CALLS.append(os.environ.get("MASTER_PORT"))
    return {"status": "finished"}


def _tracker_refused(cfg, run_dir):
    _CALLS.append(os.environ.get("MASTER_PORT"))
    raise LoggerError("config key 'run.loggers': mlflow failed to start: MlflowException: API request failed: "
                      "[Errno 111] Connection refused")


def test_no_free_port_is_retried_and_ends_in_one_line(tmp_path, monkeypatch, capfd):
    """Every candidate of every attempt taken: each attempt fails choosing its port (before the
    run is called), is retried, and the task ends in the one-line StartupError."""
    _submitit_task(monkeypatch, tmp_path)
    _CALLS.clear()
    busy = []
    try:
        for attempt in range(ATTEMPTS):
            for port in candidate_ports(4711, attempt):
                s = socket.socket()
                try:
                    s.bind(("", port))
                    s.listen()
                except OSError:  # taken already: just as good
                    pass
                busy.append(s)
        with pytest.raises(StartupError) as info:
            TrainTask(_cfg(tmp_path), "test_study_rendezvous:_record_call")()
    finally:
        for s in busy:
            s.close()
    line = str(info.value)
    assert "\n" not in line and f"after {ATTEMPTS} attempts" in line and "no free rendezvous port" in line
    assert _CALLS == [] and "attempt 3 of 3" in capfd.readouterr().err


def test_rank_0_s_port_not_published_is_retried_and_ends_in_one_line(tmp_path, monkeypatch, capfd):
    _submitit_task(monkeypatch, tmp_path, tasks=2, rank=1)
    _CALLS.clear()
    t0 = time.time()
    with pytest.raises(StartupError, match="waited 1 s for rank 0's rendezvous port"):
        TrainTask(_cfg(tmp_path, "distributed.timeout_s=1"), "test_study_rendezvous:_record_call")()
    assert _CALLS == [] and ATTEMPTS <= time.time() - t0 < ATTEMPTS + 5
    assert "attempt 2 of 3" in capfd.readouterr().err


def test_a_tracker_that_cannot_connect_is_not_retried(tmp_path, monkeypatch):
    """A tracker whose server refuses the connection fails the run as itself, at once: it is no
    rendezvous failure, whatever its message says."""
    _submitit_task(monkeypatch, tmp_path)
    _CALLS.clear()
    with pytest.raises(LoggerError, match="Connection refused"):
        TrainTask(_cfg(tmp_path), "test_study_rendezvous:_tracker_refused")()
    assert len(_CALLS) == 1 and int(_CALLS[0]) in candidate_ports(4711, 0)
