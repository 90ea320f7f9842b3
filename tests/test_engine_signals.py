"""SIGUSR2 / SIGTERM outside the training loop: while the job waits for another job's lock it
stops at once without taking it (a submitted job is requeued and waits again); during setup the run stops cleanly at its first step boundary;
during the final writes it is noted and the run finishes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from engine_helpers import PYTHON, ROOT, env, make_assets, run, write_config

WORKER = str(ROOT / "tests" / "engine_worker.py")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _signal_run(tmp_path: Path, assets, phase: str):
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=1, every=1000)
    proc = run([PYTHON, WORKER, "signal", str(out), str(cfg), phase, "data.batch_size=16"], timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]  # not killed (rc -12 / -15)
    return json.loads((out / "signal.json").read_text()), out / "sig", proc.stderr


def test_sigusr2_during_setup_interrupts_at_the_first_step_and_resumes(tmp_path, assets):
    report, run_dir, _ = _signal_run(tmp_path, assets, "setup")
    first, resumed = report["first"], report["resumed"]
    assert first["status"] == "interrupted" and first["signal"] == "SIGUSR2" and first["step"] == 1
    events = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "interrupted"] == [1]
    # The previous handler is back once train() returns, and the signal never reached it.
    assert report["handler_restored"] and report["outer_calls"] == []
    assert resumed["status"] == "finished" and resumed["step"] == 8  # 128 images / 16
    starts = [e["resumed_from"] for e in events if e["event"] == "start"]
    assert starts[0] is None and starts[1].endswith("step_00000001")
    assert json.loads((run_dir / "results.json").read_text())["status"] == "finished"


def test_sigterm_during_the_final_writes_is_noted_and_the_run_finishes(tmp_path, assets):
    report, run_dir, err = _signal_run(tmp_path, assets, "final")
    first = report["first"]
    assert first["status"] == "finished" and first["step"] == 8 and first["signal"] is None
    assert (run_dir / "prompt_pack.safetensors").is_file()
    assert "SIGTERM arrived after the last step" in err
    assert report["resumed"] == first  # read back, not rerun
    _finished_while_waiting_for_the_lock(run_dir, first)


def _finished_while_waiting_for_the_lock(run_dir: Path, results: dict) -> None:
    """A job started on the run while another job holds its lock, finishing it (results.json
    not there yet): once the lock is let go, the run is read back as finished, not re-entered
    (no second evaluation, export or results.json)."""
    written = {name: (run_dir / name).read_bytes() for name in ("results.json", "metrics.jsonl")}
    (run_dir / "results.json").rename(run_dir / "results.later")
    (run_dir / "lock.json").write_text(json.dumps({"token": "other", "host": "node-17", "pid": 99, "job": "1",
                                                   "heartbeat": time.time()}))
    proc = subprocess.Popen([PYTHON, "-m", "spt_dist.cli", "train", str(run_dir)], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        while not said or "is locked by pid 99 on node-17" not in said[-1]:
            said.append(proc.stderr.readline())
            assert said[-1], "".join(said)  # it ended before it waited
        (run_dir / "results.later").rename(run_dir / "results.json")  # the other job finishes
        (run_dir / "lock.json").unlink()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and json.loads(stdout) == results, stderr
    assert {name: (run_dir / name).read_bytes() for name in written} == written
    assert not (run_dir / "lock.json").exists()


def test_a_signal_while_waiting_for_another_jobs_lock_stops_before_training(tmp_path, assets):
    """`spt train` waits on a lock held on another host whose heartbeat stands still (up to
    run.lock_stale_s = 60 s); SIGUSR2 during that wait ends it at once: exit 0 with status
    interrupted and claimed false, the other job's lock left as it was, nothing else written."""
    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=1, every=1000)
    run_dir = out / "held"
    run_dir.mkdir(parents=True)
    held = {"token": "other", "host": "node-17", "pid": 99, "job": "1", "heartbeat": time.time()}
    (run_dir / "lock.json").write_text(json.dumps(held))
    proc = subprocess.Popen([PYTHON, "-m", "spt_dist.cli", "train", str(cfg), "run.name=held", "run.lock_stale_s=60"],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = []
        while not said or "is locked by pid 99 on node-17" not in said[-1]:
            said.append(proc.stderr.readline())
            assert said[-1], "".join(said)  # it ended before it waited
        asked = time.monotonic()
        proc.send_signal(signal.SIGUSR2)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and time.monotonic() - asked < 10, stderr
    assert json.loads(stdout) == {"status": "interrupted", "signal": "SIGUSR2", "claimed": False,
                                  "run_dir": str(run_dir)}
    assert f"spt: SIGUSR2 arrived while this job waited for the lock of {run_dir}: stopped before training" in stderr
    assert json.loads((run_dir / "lock.json").read_text()) == held
    assert [p.name for p in run_dir.iterdir()] == ["lock.json"]


def test_a_signal_while_a_pack_waits_for_a_members_lock_says_per_member_what_happened(tmp_path, assets):
    """Member 0's folder is claimed (config.yaml written), member 1's is locked on another host:
    SIGUSR2 during that wait lets member 0 go and each member's results say what happened."""
    from spt_dist.config.pack import load_pack
    from spt_dist.rundir import run_dir_for

    out = tmp_path / "runs"
    cfg = write_config(tmp_path / "cfg.yaml", assets, out, epochs=1, every=1000)
    (tmp_path / "pack.yaml").write_text("members:\n  - [optim.lr=0.01]\n  - [optim.lr=0.03]\n")
    overrides = ["run.lock_stale_s=60"]
    first, second = [run_dir_for(m.cfg) for m in load_pack(str(cfg), str(tmp_path / "pack.yaml"), overrides)]
    second.mkdir(parents=True)
    held = {"token": "other", "host": "node-17", "pid": 99, "job": "1", "heartbeat": time.time()}
    (second / "lock.json").write_text(json.dumps(held))
    proc = subprocess.Popen([PYTHON, "-m", "spt_dist.cli", "train", str(cfg), "--pack", str(tmp_path / "pack.yaml"),
                             "--no-progress", *overrides], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        said = []
        while not said or "is locked by pid 99 on node-17" not in said[-1]:
            said.append(proc.stderr.readline())
            assert said[-1], "".join(said)  # it ended before it waited
        proc.send_signal(signal.SIGUSR2)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    results = json.loads(stdout)
    assert [(r["status"], r["signal"], r["claimed"], r["run_dir"]) for r in results] == [
        ("interrupted", "SIGUSR2", True, str(first)), ("interrupted", "SIGUSR2", False, str(second))]
    assert results[0]["note"] == ("claimed, then let go: SIGUSR2 ended the wait for the lock of pack member 1's run "
                                  "folder; nothing trained")
    assert results[1]["note"] == "SIGUSR2 ended the wait for this run folder's lock; nothing trained"
    assert (first / "config.yaml").is_file() and not (first / "lock.json").exists()  # claimed, then let go
    assert json.loads((second / "lock.json").read_text()) == held
    assert [p.name for p in second.iterdir()] == ["lock.json"]


def test_a_submitted_job_stopped_while_waiting_for_a_lock_is_requeued_and_then_trains(tmp_path, assets,
                                                                                       monkeypatch):
    """A submitit job (the local executor's requeue cycle, as SLURM's) waits for a lock held on
    another host; SIGUSR2 to its task ends the wait, rank 0 says so and requeues, the requeued
    task waits again, and once the other job's lock is gone it trains the run to the end."""
    from spt_dist.config import load_config
    from spt_dist.study.executor import make_executor
    from spt_dist.study.task import TrainTask

    for k, v in env().items():
        monkeypatch.setenv(k, v)
    for k in set(os.environ) - set(env()):
        monkeypatch.delenv(k)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    out = tmp_path / "runs"
    cfg = load_config(str(write_config(tmp_path / "cfg.yaml", assets, out, epochs=1, every=1000)),
                      ["run.name=held", "run.lock_stale_s=600", "run.progress=false", "launch.cluster=local",
                       f"launch.folder={tmp_path / 'jobs'}", "launch.tasks_per_node=1", "launch.timeout_min=10",
                       "data.batch_size=16"])
    run_dir = out / "held"
    run_dir.mkdir(parents=True)
    (run_dir / "lock.json").write_text(json.dumps({"token": "other", "host": "node-17", "pid": 99, "job": "1",
                                                   "heartbeat": time.time()}))
    job = make_executor(cfg.launch).submit(TrainTask(cfg))
    waited = "is locked by pid 99 on node-17"

    def until(seen, timeout_s: float = 120) -> None:
        deadline = time.time() + timeout_s
        while not seen() and time.time() < deadline:
            assert not job.done(), (job.stdout() or "") + (job.stderr() or "")
            time.sleep(0.2)
        assert seen(), (job.stdout() or "") + (job.stderr() or "")

    try:
        until(lambda: waited in (job.stderr() or ""))
        tasks = subprocess.run(["pgrep", "-P", str(job.job_id)], capture_output=True, text=True).stdout.split()
        assert len(tasks) == 1, tasks
        os.kill(int(tasks[0]), signal.SIGUSR2)
        until(lambda: (job.stderr() or "").count(waited) == 2)  # the requeued task waits again
        assert json.loads((run_dir / "lock.json").read_text())["host"] == "node-17"  # never taken
        (run_dir / "lock.json").unlink()  # the other job ends
        deadline = time.time() + 180
        while not job.done() and time.time() < deadline:
            time.sleep(0.5)
        result = job.result()
    finally:
        job.cancel(check=False)
    said = job.stdout() or ""
    assert f"run stopped while waiting for the lock of {run_dir}, nothing trained; requeueing" in said, said
    assert result["status"] == "finished" and result["step"] == 8, result
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["resumed_from"] for e in events if e["event"] == "start"] == [None]  # nothing trained before
