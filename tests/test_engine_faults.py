"""Faults a real 2-rank torchrun job must survive or end cleanly, never hang:

- a frozen rank (SIGSTOP) ends the job within distributed.timeout_s + 30 s, the rank named;
- Ctrl-C (SIGINT to torchrun, or to a single-process `spt train`) saves a checkpoint, exits 0,
  leaves no process behind, resumes exactly;
- torchrun killed by a signal it does not handle (SIGUSR2 to its process group): the ranks
  follow their parent's death (checkpoint, exit) instead of training on as orphans;
- a peer's heartbeat file read empty or half written is no news, not a freeze (the watchdog
  alone, in this process).
"""
from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import List

import pytest
import torch
from safetensors.torch import load_file

from engine_helpers import PYTHON, ROOT, env, make_assets, torchrun, wait_for_step, write_config
from spt_dist.engine.watchdog import Watchdog
from spt_dist.rundir import RunLock

TIMEOUT_S = 20


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_assets(tmp_path_factory.getbasetemp() / "engine_assets")


def _children(pid: int) -> List[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _rank_pids(launcher: int) -> dict:
    ranks = {}
    for pid in _children(launcher):
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                ranks[int(item[5:])] = pid
    return ranks


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _launch(config: Path, *overrides: str) -> subprocess.Popen:
    # Its own process group, as a job started from a shell: a signal to the group stays there.
    return subprocess.Popen(torchrun(["-m", "spt_dist.cli", "train", str(config), *overrides]), cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _config(tmp_path: Path, assets, epochs: int = 40) -> Path:
    return write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=epochs, every=1000)


def test_a_frozen_rank_ends_the_job_naming_it_3_of_3(tmp_path, assets):
    """Three jobs at once, each with one rank frozen at its own step (rank 0: the lock owner, or
    rank 1): every job ends within timeout_s + 30 s of the freeze, naming that rank (more tries:
    benchmarks/bench_faults.py)."""
    config = write_config(tmp_path / "cfg.yaml", assets, tmp_path / "runs", epochs=500, every=10 ** 6)
    procs = [_launch(config, f"run.name=frozen{i}", f"distributed.timeout_s={TIMEOUT_S}") for i in range(3)]
    frozen, ranks, start = {}, {}, {}
    try:
        for i, proc in enumerate(procs):
            wait_for_step(tmp_path / "runs" / f"frozen{i}" / "metrics.jsonl", 2 + 3 * i, proc, timeout=300)
            ranks[i], frozen[i] = _rank_pids(proc.pid), i % 2
            os.kill(ranks[i][frozen[i]], signal.SIGSTOP)
            start[i] = time.time()
        for i, proc in enumerate(procs):
            out, _ = proc.communicate(timeout=max(1.0, start[i] + TIMEOUT_S + 30 - time.time()))
            assert proc.returncode != 0 and time.time() - start[i] <= TIMEOUT_S + 30, (i, out[-3000:])
            assert f"rank {frozen[i]} stopped answering" in out, out[-3000:]
    finally:
        for proc in procs:
            proc.kill()
        for pids in ranks.values():
            for pid in pids.values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_a_heartbeat_that_cannot_be_written_does_not_stop_the_lock_refresh(tmp_path):
    """The rank's own heartbeat write fails (its folder replaced by a file): the run folder's
    lock is still refreshed, so no other job ever takes a live run's folder for abandoned."""
    lock = RunLock(tmp_path, stale_s=60, refresh_s=0.2)
    lock.acquire()
    dog = Watchdog(tmp_path, 0, 1, "tok", timeout_s=6, lock=lock, interval=0.2, on_dead=lambda rank: None)
    dog.start()
    try:
        time.sleep(0.5)
        shutil.rmtree(tmp_path / ".heartbeat")
        (tmp_path / ".heartbeat").write_text("not a folder")  # every beat now fails with an OSError
        first = json.loads((tmp_path / "lock.json").read_text())["heartbeat"]
        time.sleep(1.5)
        assert json.loads((tmp_path / "lock.json").read_text())["heartbeat"] > first
    finally:
        dog.stop()
        lock.release()


def test_watchdog_keeps_a_peers_last_good_heartbeat(tmp_path):
    """Rank 1's heartbeat file is read empty, then half written, for less than the allowance after
    a good beat: rank 0 carries on (the old start time is never used instead). When rank 1 truly
    stops, rank 0 names it within the allowance and releases the run folder's lock."""
    lock = RunLock(tmp_path, stale_s=60)
    lock.acquire()
    dead = []
    dog = Watchdog(tmp_path, 0, 2, "tok", timeout_s=6, lock=lock, interval=0.2, on_dead=dead.append)
    assert dog.stale_s == 3
    peer = tmp_path / ".heartbeat" / "rank1.json"

    def beat() -> str:
        text = json.dumps({"token": "tok", "time": time.time(), "step": 7, "phase": "train", "pid": 1,
                           "host": "another-host"})  # not this host: nothing is killed
        peer.write_text(text)
        return text

    dog.start()
    try:
        until = time.time() + 4  # longer than the allowance since the watchdog started
        while time.time() < until:
            beat()
            time.sleep(0.2)
        text = beat()
        time.sleep(0.5)
        for moment in ("", text[: len(text) // 2], json.dumps({"token": "an earlier job", "time": 1.0})):
            peer.write_text(moment)
            time.sleep(0.6)  # 1.8 s in all: less than the 3 s allowance after the last good beat
        assert dead == []
        beat()
        time.sleep(0.5)
        peer.write_text("")  # and from now on, silence
        stopped = time.time()
        while not dead and time.time() < stopped + 10:
            time.sleep(0.1)
        assert dead == [1] and 2.0 <= time.time() - stopped <= 3 + 1.5
        assert not (tmp_path / "lock.json").exists()  # released before the job ends
    finally:
        dog.stop()


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, assets) -> Path:
    """A 2-rank run trained to the end (left as it is: tests copy it)."""
    root = tmp_path_factory.mktemp("reference")
    config = _config(root, assets, epochs=2)
    proc = _launch(config, "run.name=full")
    assert proc.wait(timeout=300) == 0, proc.stdout.read()[-3000:]
    return root / "runs" / "full"


@pytest.fixture(scope="module")
def reference(reference_run) -> dict:
    return load_file(str(reference_run / "prompt_pack.safetensors"))


def test_a_run_finished_while_the_ranks_start_is_read_back_by_every_rank(tmp_path, reference_run):
    """Rank 0 starts train() on a run whose results.json is not there yet; rank 1 starts once it
    is (another job finished the run in between). The ranks decide together: both read the run
    back as finished (before, rank 1 returned alone and rank 0 waited for it at the rendezvous)."""
    run = tmp_path / "runs" / "full"
    shutil.copytree(reference_run, run)
    written = {name: (run / name).read_bytes() for name in ("results.json", "metrics.jsonl")}
    (run / "results.json").rename(run / "results.hidden")
    proc = subprocess.run(torchrun([str(ROOT / "tests" / "engine_worker.py"), "finished_meanwhile", str(tmp_path),
                                    str(run / "config.yaml"), str(run / "results.hidden"),
                                    f"run.out_dir={tmp_path / 'runs'}"]),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "finished_meanwhile.json").read_text())
    assert report == json.loads(written["results.json"])
    assert {name: (run / name).read_bytes() for name in written} == written  # neither trained nor evaluated again
    # Read back before the run's inputs are checked (a finished run needs none of them).
    proc = subprocess.run(torchrun([str(ROOT / "tests" / "engine_worker.py"), "finished_unchecked", str(tmp_path),
                                    str(run / "config.yaml"), f"run.out_dir={tmp_path / 'runs'}"]),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads((tmp_path / "finished_unchecked.json").read_text()) == report


@pytest.mark.parametrize("how", ["sigint-to-torchrun", "sigusr2-to-torchruns-group"])
def test_interrupted_job_saves_leaves_nothing_behind_and_resumes_exactly(tmp_path, assets, reference, how):
    config = _config(tmp_path, assets, epochs=2)
    run = tmp_path / "runs" / "cut"
    proc = _launch(config, "run.name=cut")
    wait_for_step(run / "metrics.jsonl", 3, proc, timeout=180)
    ranks = _rank_pids(proc.pid)
    assert sorted(ranks) == [0, 1]
    if how == "sigint-to-torchrun":  # what Ctrl-C in its terminal does
        os.kill(proc.pid, signal.SIGINT)
    else:  # a signal torchrun does not handle: it dies at once
        os.killpg(os.getpgid(proc.pid), signal.SIGUSR2)
    out, _ = proc.communicate(timeout=60)
    deadline = time.time() + 60
    while any(_alive(p) for p in ranks.values()) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in ranks.values()), "orphaned ranks kept running"
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stop = [e for e in events if e["event"] == "interrupted"]
    assert stop and stop[-1]["signal"] in ("SIGINT", "SIGTERM"), out[-3000:]
    assert sorted(run.glob("checkpoints/step_*")), "no checkpoint saved"
    assert not (run / "lock.json").exists()
    resumed = subprocess.run(torchrun(["-m", "spt_dist.cli", "train", str(run)]), cwd=ROOT, env=env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    pack = load_file(str(run / "prompt_pack.safetensors"))
    assert pack.keys() == reference.keys()
    assert all(torch.equal(pack[k], reference[k]) for k in pack)


def test_ctrl_c_to_a_single_process_run_saves_exits_0_and_resumes_exactly(tmp_path, assets):
    config = _config(tmp_path, assets, epochs=1)  # 16 steps

    def spt_train(*args: str) -> subprocess.Popen:
        return subprocess.Popen([PYTHON, "-m", "spt_dist.cli", "train", *args], cwd=ROOT, env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    whole = spt_train(str(config), "run.name=whole")
    assert whole.wait(timeout=300) == 0, whole.stdout.read()[-3000:]
    run = tmp_path / "runs" / "cut"
    proc = spt_train(str(config), "run.name=cut")
    wait_for_step(run / "metrics.jsonl", 3, proc, timeout=180)
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C in its terminal does
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]  # as docs/reliability.md says: interrupted after saving
    results = json.loads((run / "results.json").read_text())
    assert results["status"] == "interrupted" and results["signal"] == "SIGINT" and results["step"] < 16
    assert results["step"] in [int(c.name[len("step_"):]) for c in run.glob("checkpoints/step_*")]
    assert not (run / "lock.json").exists()
    resumed = spt_train(str(run))
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()[-3000:]
    pack, reference = (load_file(str(tmp_path / "runs" / r / "prompt_pack.safetensors")) for r in ("cut", "whole"))
    assert pack.keys() == reference.keys() and all(torch.equal(pack[k], reference[k]) for k in pack)


OBSERVER = """
import sys, time
from pathlib import Path
from spt_dist.engine.watchdog import Watchdog
folder = Path(sys.argv[1])
dog = Watchdog(folder, 0, 2, "tok", timeout_s=6, interval=0.2,
               on_dead=lambda r: (folder / "ended.txt").write_text(str(r)))
dog.start()
(folder / "started.txt").write_text("")
time.sleep(60)
"""


def test_a_stall_of_every_rank_at_once_does_not_end_the_job(tmp_path):
    """The observing rank and its peer are both silent for longer than the allowance (as when a
    shared file system blocks every writer): once they run again the job goes on; a peer that
    then stays silent is still named."""
    import signal
    import subprocess
    import sys

    from engine_helpers import ROOT, env

    peer = tmp_path / ".heartbeat" / "rank1.json"
    peer.parent.mkdir()

    def beat() -> None:
        peer.write_text(json.dumps({"token": "tok", "time": time.time(), "step": 3, "phase": "train", "pid": 1,
                                    "host": "another-host"}))

    beat()
    proc = subprocess.Popen([sys.executable, "-c", OBSERVER, str(tmp_path)], cwd=ROOT, env=env())
    try:
        while not (tmp_path / "started.txt").exists():
            beat()
            time.sleep(0.1)
        time.sleep(1.0)
        beat()
        proc.send_signal(signal.SIGSTOP)  # the observer and (below) the peer: both silent for 4.5 s
        time.sleep(4.5)
        proc.send_signal(signal.SIGCONT)  # the observer runs first: the peer's beat is 4.5 s old
        time.sleep(0.6)
        for _ in range(15):  # then the peer beats on
            time.sleep(0.2)
            beat()
        assert not (tmp_path / "ended.txt").exists()
        stopped = time.time()  # and now the peer stays silent
        while not (tmp_path / "ended.txt").exists() and time.time() < stopped + 10:
            time.sleep(0.1)
        assert (tmp_path / "ended.txt").read_text() == "1" and time.time() - stopped <= 3 + 1.5
    finally:
        proc.kill()
        proc.wait()
