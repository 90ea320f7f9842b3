"""Fault injection against real 2-rank torchrun jobs (gloo, DeepSpeed's CPU accelerator): each
fault is injected `tries` times and counted as held when the system does what it promises.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_faults.py [--tries 5] [--only NAME ...]

What "held" means per fault is in FAULTS below. Writes benchmarks/results/faults.json and
prints the table the reliability page quotes. Takes about 20-30 minutes on 2 cores.
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
from typing import Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from engine_helpers import PYTHON, env, make_assets, torchrun, wait_for_step, write_config  # noqa: E402

TIMEOUT_S = 20


def _launch(args: List[str]) -> subprocess.Popen:
    return subprocess.Popen(torchrun(["-m", "spt_dist.cli", "train", *args]), cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


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
        ref = _launch([str(self.config), "run.name=reference"])
        assert ref.wait(timeout=600) == 0, ref.stdout.read()[-2000:]
        self.reference = _pack(root / "runs" / "reference")
        self.n = 0

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


def faults(b: Bench) -> Dict[str, Callable[[], bool]]:
    bad = {
        "grad_accum beyond an epoch": (["optim.grad_accum=99"], "config key 'optim.grad_accum'"),
        "prompt_length=20000": (["method.prompt_length=20000"], "config key 'method.prompt_length'"),
        "img_size=7000": (["model.img_size=7000"], "config key 'model.img_size'"),
        "backend=nccl without GPUs": (["distributed.backend=nccl"], "config key 'distributed.backend'"),
        "run.name=../x": (["run.name=../x"], "config key 'run.name'"),
        "defaults=[...] override": (["defaults=[base]"], "`defaults` composes files"),
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
    }
    out.update({f"bad config: {k}": (lambda o=o, m=m: b.bad_config(o, m)) for k, (o, m) in bad.items()})
    out.update({f"corrupt shards: {k}": (lambda d=d: b.corrupt_shards(d)) for k, d in corrupt.items()})
    return out


ONCE = ("bad config", "corrupt shards", "two ")


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
            held = sum(bool(fn()) for _ in range(tries))
            rows.append({"fault": name, "tries": tries, "held": held})
            print(f"{name:55} {held}/{tries}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "fault injection, 2 gloo ranks under torchrun",
                               "timeout_s": TIMEOUT_S, "rows": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
