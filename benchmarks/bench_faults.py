"""Fault injection against real 2-rank torchrun jobs (gloo, DeepSpeed's CPU accelerator): each
fault is injected `tries` times and counted as held when the system does what it promises.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_faults.py [--tries 5] [--only NAME ...]

What "held" means per fault is in each case's docstring below. Writes
benchmarks/results/faults.json (or --out) and prints the table the reliability page quotes.
Takes about 30-40 minutes on 2 cores; `--only` runs the faults whose names contain one of its
words (the uninterrupted reference run is made only when a chosen fault compares with it). The
disk-full case mounts a 64 MiB tmpfs and needs root (else it is reported as skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from engine_helpers import (PYTHON, corrupt_images, env, fill_disk, make_assets, torchrun,  # noqa: E402
                            wait_for_step, write_config)

TIMEOUT_S = 20


def _launch(args: List[str], extra_env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    return subprocess.Popen(torchrun(["-m", "spt_dist.cli", "train", *args]), cwd=ROOT,
                            env={**env(), **(extra_env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _spt(*args: str) -> subprocess.CompletedProcess:
    """One `spt` process (no launcher)."""
    return subprocess.run([PYTHON, "-m", "spt_dist.cli", *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=600)


def _ranks(launcher: int) -> Dict[int, int]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == launcher:
            for item in environ:
                if item.startswith(b"RANK="):
                    out[int(item[5:])] = int(entry.name)
    return out


def _pack(run: Path) -> Dict:
    from safetensors.torch import load_file

    path = run / "prompt_pack.safetensors"
    return load_file(str(path)) if path.is_file() else {}


def _same(a: Dict, b: Dict) -> bool:
    import torch

    return bool(a) and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _resume(run: Path) -> bool:
    proc = subprocess.run(torchrun(["-m", "spt_dist.cli", "train", str(run)]), cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=600)
    return proc.returncode == 0


class Bench:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.assets = make_assets(root / "assets")
        self.config = write_config(root / "cfg.yaml", self.assets, root / "runs", epochs=3, every=3)
        self.long = write_config(root / "long.yaml", self.assets, root / "runs", epochs=60, every=1000)
        self._reference: Optional[Dict] = None
        self.n = 0

    @property
    def reference(self) -> Dict:
        """The prompt pack of an uninterrupted run of self.config, made on first use."""
        if self._reference is None:
            ref = _launch([str(self.config), "run.name=reference"])
            assert ref.wait(timeout=600) == 0, ref.stdout.read()[-2000:]
            self._reference = _pack(self.root / "runs" / "reference")
        return self._reference

    def name(self) -> str:
        self.n += 1
        return f"run{self.n}"

    # -- faults: each returns whether it held ------------------------------------------------
    def signal_a_rank(self, sig: signal.Signals) -> bool:
        """Preemption / cancel at a random step: checkpoint, clean exit, bit-identical resume."""
        name = self.name()
        proc = _launch([str(self.config), f"run.name={name}"])
        wait_for_step(self.root / "runs" / name / "metrics.jsonl", random.randint(1, 20), proc, timeout=300)
        ranks = _ranks(proc.pid)
        os.kill(ranks[random.choice(sorted(ranks))], sig)
        proc.wait(timeout=120)
        run = self.root / "runs" / name
        return _resume(run) and _same(_pack(run), self.reference)

    def kill_a_rank(self) -> bool:
        """kill -9 of a rank: the job ends (no hang) and resumes bit-identically from its checkpoint."""
        name = self.name()
        proc = _launch([str(self.config), f"run.name={name}"])
        wait_for_step(self.root / "runs" / name / "metrics.jsonl", random.randint(4, 20), proc, timeout=300)
        ranks = _ranks(proc.pid)
        os.kill(ranks[random.choice(sorted(ranks))], signal.SIGKILL)
        try:
            proc.wait(timeout=TIMEOUT_S + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return False
        run = self.root / "runs" / name
        return _resume(run) and _same(_pack(run), self.reference)

    def freeze_a_rank(self) -> bool:
        """SIGSTOP: the job ends within timeout_s + 30 s, naming the frozen rank."""
        name = self.name()
        proc = _launch([str(self.long), f"run.name={name}", f"distributed.timeout_s={TIMEOUT_S}"])
        wait_for_step(self.root / "runs" / name / "metrics.jsonl", random.randint(1, 30), proc, timeout=300)
        ranks = _ranks(proc.pid)
        frozen = random.choice(sorted(ranks))
        os.kill(ranks[frozen], signal.SIGSTOP)
        start = time.time()
        try:
            out, _ = proc.communicate(timeout=TIMEOUT_S + 30)
        except subprocess.TimeoutExpired:
            out = ""
        for pid in ranks.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return time.time() - start <= TIMEOUT_S + 30 and f"rank {frozen} stopped answering" in out

    def launcher_signal(self, how: str) -> bool:
        """Ctrl-C to torchrun, or torchrun killed by SIGUSR2 to its group: no orphan, exact resume."""
        name = self.name()
        proc = _launch([str(self.config), f"run.name={name}"])
        wait_for_step(self.root / "runs" / name / "metrics.jsonl", random.randint(1, 20), proc, timeout=300)
        ranks = _ranks(proc.pid)
        if how == "sigint":
            os.kill(proc.pid, signal.SIGINT)
        else:
            os.killpg(os.getpgid(proc.pid), signal.SIGUSR2)
        proc.wait(timeout=120)
        deadline = time.time() + 60
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in ranks.values()):
            time.sleep(0.2)
        orphans = [p for p in ranks.values() if Path(f"/proc/{p}").exists()]
        run = self.root / "runs" / name
        return not orphans and _resume(run) and _same(_pack(run), self.reference)

    def two_jobs(self, identical: bool) -> bool:
        """Two jobs on one run folder at once: one trains, one is refused, never a mix."""
        from spt_dist.config import load_config
        from spt_dist.rundir import config_hash

        name = self.name()
        other = "optim.lr=0.01" if identical else "optim.lr=0.05"
        procs = [_launch([str(self.config), f"run.name={name}", lr]) for lr in ("optim.lr=0.01", other)]
        codes = sorted(p.wait(timeout=600) for p in procs)
        run = self.root / "runs" / name
        held = load_config(str(run / "config.yaml"))
        metas = [json.loads(m.read_text())["identity"]["config_hash"] for m in run.glob("checkpoints/step_*/meta.json")]
        results = json.loads((run / "results.json").read_text())
        return codes[0] == 0 and codes[1] != 0 and results["status"] == "finished" \
            and all(h == config_hash(held) for h in metas)

    def _interrupted(self, name: str, at_step: int, *overrides: str) -> Path:
        """A run of self.config stopped by SIGTERM to rank 0 at `at_step` (a checkpoint saved)."""
        proc = _launch([str(self.config), f"run.name={name}", *overrides])
        run = self.root / "runs" / name
        wait_for_step(run / "metrics.jsonl", at_step, proc, timeout=300)
        os.kill(_ranks(proc.pid)[0], signal.SIGTERM)
        proc.wait(timeout=120)
        return run

    def every_checkpoint_corrupt(self) -> bool:
        """Every checkpoint of an interrupted run damaged: the run says no valid checkpoint is left,
        records checkpoints_lost, starts again from step 0 and ends bit-identical to the reference."""
        run = self._interrupted(self.name(), 7)
        steps = sorted(run.glob("checkpoints/step_*"))
        for step in steps:
            (step / "meta.json").write_text("{ damaged")
        resumed = subprocess.run(torchrun(["-m", "spt_dist.cli", "train", str(run)]), cwd=ROOT, env=env(),
                                 capture_output=True, text=True, timeout=600)
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        starts = [e for e in events if e["event"] == "start"]
        return bool(steps) and resumed.returncode == 0 and "no valid checkpoint is left" in resumed.stderr \
            and any(e["event"] == "checkpoints_lost" for e in events) and starts[-1]["resumed_from"] is None \
            and _same(_pack(run), self.reference)

    def resume_without_config_yaml(self) -> bool:
        """config.yaml of an interrupted run deleted: another config is refused (exit 2, naming the
        checkpoints' config hash) and leaves the folder alone; the run's own config resumes it exactly."""
        name = self.name()
        run = self._interrupted(name, 5)
        (run / "config.yaml").unlink()
        other = _spt("train", str(self.config), f"run.name={name}", "optim.lr=0.05")
        refused = other.returncode == 2 and "its checkpoints were written by another config" in other.stderr \
            and not (run / "config.yaml").exists()
        again = _launch([str(self.config), f"run.name={name}"])
        return refused and again.wait(timeout=600) == 0 and _same(_pack(run), self.reference)

    def live_lock_takeover(self) -> bool:
        """A second `spt train` on a folder a live job trains, with the same SLURM job id (two steps
        of one allocation), is refused (exit 2, naming the owner); the first trains on with its lock
        and stops cleanly when told to (one start event: never two runs in the folder)."""
        name = self.name()
        job = {"SLURM_JOB_ID": "990001"}
        args = [str(self.long), f"run.name={name}", "optim.epochs=5000"]  # still training at the end
        first = _launch(args, job)
        run = self.root / "runs" / name
        wait_for_step(run / "metrics.jsonl", 2, first, timeout=300)
        token = json.loads((run / "lock.json").read_text())["token"]
        second = subprocess.run([PYTHON, "-m", "spt_dist.cli", "train", *args],
                                cwd=ROOT, env={**env(), **job}, capture_output=True, text=True, timeout=600)
        refused = second.returncode == 2 and "is being trained by another job" in second.stderr
        kept = first.poll() is None and (run / "lock.json").is_file() \
            and json.loads((run / "lock.json").read_text())["token"] == token
        os.kill(_ranks(first.pid)[0], signal.SIGTERM)
        stopped = first.wait(timeout=120) == 0
        events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return refused and kept and stopped and [e["event"] for e in events].count("start") == 1

    def disk_full(self) -> Optional[bool]:
        """The run folder's file system fills while a 2-rank job trains: `no space left on <folder>`,
        no partial checkpoint left, and after space is freed the run resumes bit-identically.
        None (skipped) without root to mount the tmpfs."""
        mount = self.root / f"fs{self.n}"
        mount.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                                               capture_output=True).returncode:
            return None
        try:
            name, filler_path = self.name(), mount / "filler"
            config = write_config(mount / "cfg.yaml", self.assets, mount / "runs", epochs=3, every=3)
            filler = open(filler_path, "wb", buffering=0)
            proc = _launch([str(config), f"run.name={name}"])
            run = mount / "runs" / name
            wait_for_step(run / "metrics.jsonl", 5, proc, timeout=300)
            fill_disk(filler)
            out, _ = proc.communicate(timeout=300)
            named = proc.returncode != 0 and f"no space left on {run}" in out and "unexpected pos" not in out
            clean = not list((run / "checkpoints").glob(".tmp_*"))
            filler_path.unlink()
            resumed = subprocess.run(torchrun(["-m", "spt_dist.cli", "train", str(run)]), cwd=ROOT, env=env(),
                                     capture_output=True, text=True, timeout=600)
            return named and clean and resumed.returncode == 0 and _same(_pack(run), self.reference)
        finally:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)

    def corrupt_test_image(self) -> bool:
        """An undecodable test image (indexed as it is): refused before any training step, exit 2,
        naming the split, shard and key."""
        from spt_dist.data import ShardIndex

        shards = self.root / f"shards{self.n}"
        self.n += 1
        shutil.copytree(self.assets["shards"], shards)
        index = ShardIndex.load(shards)
        key = index.split("test").shards[0].keys[3]
        corrupt_images(index, "test", {key})
        name = self.name()
        proc = _launch([str(self.config), f"data.root={shards}", f"run.name={name}"])
        out, _ = proc.communicate(timeout=600)
        metrics = self.root / "runs" / name / "metrics.jsonl"
        events = [json.loads(line)["event"] for line in metrics.read_text().splitlines()] if metrics.is_file() else []
        return proc.returncode != 0 and "error on rank" in out and "bad sample in split 'test'" in out \
            and f"key '{key}'" in out and "train" not in events

    def bad_config(self, overrides: List[str], message: str) -> bool:
        """Refused before any data or model is loaded: exit code 2, the key named, no run folder."""
        name = self.name()
        proc = subprocess.run([PYTHON, "-m", "spt_dist.cli", "train", str(self.config), f"run.name={name}",
                               *overrides], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
        return proc.returncode == 2 and message in proc.stderr and not (self.root / "runs" / name).exists()

    def corrupt_shards(self, damage: Callable[[Path], None]) -> bool:
        """`spt shards verify` finds it (exit 1) or the index refuses to load, and training refuses it."""
        shards = self.root / f"shards{self.n}"
        self.n += 1
        shutil.copytree(self.assets["shards"], shards)
        damage(shards)
        verify = subprocess.run([PYTHON, "-m", "spt_dist.cli", "shards", "verify", str(shards)], cwd=ROOT,
                                env=env(), capture_output=True, text=True, timeout=300)
        train = subprocess.run([PYTHON, "-m", "spt_dist.cli", "train", str(self.config), f"data.root={shards}",
                                f"run.name={self.name()}"], cwd=ROOT, env=env(), capture_output=True, text=True,
                               timeout=300)
        return verify.returncode in (1, 2) and train.returncode == 2


def _edit_index(shards: Path, change: Callable[[dict], None]) -> None:
    raw = json.loads((shards / "index.json").read_text())
    change(raw)
    (shards / "index.json").write_text(json.dumps(raw))


def _rewrite_member(shards: Path, suffix: str, data: bytes) -> None:
    import tarfile

    tar_path = shards / "train-000000.tar"
    with tarfile.open(tar_path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(suffix))
    raw = bytearray(tar_path.read_bytes())
    raw[member.offset_data:member.offset_data + len(data)] = data
    tar_path.write_bytes(bytes(raw))


def faults(b: Bench) -> Dict[str, Callable[[], Optional[bool]]]:
    files = b.root / "files"
    files.mkdir(exist_ok=True)
    (files / "ds_type.json").write_text(json.dumps({"zero_optimization": {"reduce_bucket_size": "abc"}}))
    (files / "ds_broken.json").write_text('{"zero_optimization": {"stage": 0,')
    (files / "truncated.safetensors").write_bytes(b.assets["backbone"].read_bytes()[:3000])
    (files / "garbage.pth").write_bytes(b"this is not a checkpoint at all" * 10)
    bad = {
        "grad_accum beyond an epoch": (["optim.grad_accum=99"], "config key 'optim.grad_accum'"),
        "prompt_length=20000": (["method.prompt_length=20000"], "config key 'method.prompt_length'"),
        "img_size=7000": (["model.img_size=7000"], "config key 'model.img_size'"),
        "backend=nccl without GPUs": (["distributed.backend=nccl"], "config key 'distributed.backend'"),
        "run.name=../x": (["run.name=../x"], "config key 'run.name'"),
        "defaults=[...] override": (["defaults=[base]"], "`defaults` composes files"),
        "deepspeed_json a value DeepSpeed rejects": ([f"distributed.deepspeed_json={files / 'ds_type.json'}"],
                                                     "DeepSpeed rejects"),
        "deepspeed_json not valid JSON": ([f"distributed.deepspeed_json={files / 'ds_broken.json'}"],
                                          "is not valid JSON"),
        "truncated weights": ([f"model.checkpoint={files / 'truncated.safetensors'}"], "config key 'model.checkpoint'"),
        "garbage weights": ([f"model.checkpoint={files / 'garbage.pth'}"], "config key 'model.checkpoint'"),
    }
    corrupt = {
        "labels edited in index.json": lambda s: _edit_index(
            s, lambda raw: raw["splits"]["train"]["shards"][0]["labels"].__setitem__(0, 2)),
        "a shard listed twice": lambda s: _edit_index(
            s, lambda raw: raw["splits"]["train"]["shards"].append(raw["splits"]["train"]["shards"][0])),
        "a wrong but valid .cls": lambda s: _rewrite_member(s, ".cls", b"2"),
        "image bytes changed in a tar": lambda s: _rewrite_member(s, ".png", b"\0" * 64),
        "a tar truncated": lambda s: (s / "train-000001.tar").write_bytes((s / "train-000001.tar").read_bytes()[:2048]),
    }
    out: Dict[str, Callable[[], bool]] = {
        "SIGUSR2 to a rank (preemption) at a random step": lambda: b.signal_a_rank(signal.SIGUSR2),
        "SIGTERM to a rank (cancel) at a random step": lambda: b.signal_a_rank(signal.SIGTERM),
        "kill -9 of a rank": b.kill_a_rank,
        "SIGSTOP of a rank (frozen)": b.freeze_a_rank,
        "Ctrl-C (SIGINT) to torchrun": lambda: b.launcher_signal("sigint"),
        "SIGUSR2 to torchrun's process group": lambda: b.launcher_signal("sigusr2"),
        "two configs on one run folder at once": lambda: b.two_jobs(False),
        "two identical jobs on one run folder at once": lambda: b.two_jobs(True),
        "a second job on a live job's folder, same SLURM job id": b.live_lock_takeover,
        "resume with config.yaml deleted": b.resume_without_config_yaml,
        "every checkpoint corrupt": b.every_checkpoint_corrupt,
        "disk full while training": b.disk_full,
    }
    out.update({f"bad config: {k}": (lambda o=o, m=m: b.bad_config(o, m)) for k, (o, m) in bad.items()})
    out.update({f"corrupt shards: {k}": (lambda d=d: b.corrupt_shards(d)) for k, d in corrupt.items()})
    out["corrupt data: an undecodable test image"] = b.corrupt_test_image
    return out


ONCE = ("bad config", "corrupt ", "two ", "a second job", "resume with", "every checkpoint", "disk full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5, help="tries of each signal/kill/freeze fault")
    parser.add_argument("--only", nargs="+", default=[], help="substrings of the faults to run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faults.json"))
    args = parser.parse_args()
    random.seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        b = Bench(Path(tmp))
        for name, fn in faults(b).items():
            if args.only and not any(o in name for o in args.only):
                continue
            tries = 1 if name.startswith(ONCE) else args.tries
            outcomes = [fn() for _ in range(tries)]
            if all(o is None for o in outcomes):
                rows.append({"fault": name, "tries": 0, "held": 0, "skipped": True})
                print(f"{name:55} skipped", flush=True)
                continue
            held = sum(bool(o) for o in outcomes)
            rows.append({"fault": name, "tries": tries, "held": held})
            print(f"{name:55} {held}/{tries}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "fault injection, 2 gloo ranks under torchrun",
                               "timeout_s": TIMEOUT_S, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
