"""The GPU check's sections, each in its own process with its own time limit; one JSON out.

Started by benchmarks/gpu_check.sh (which installs the carried wheels first). Sections, in
order of what matters most, each skipped when the overall deadline would not leave it time:

1. shards: `spt shards build fmnist --classes 5,6,7,8,9` from the carried Fashion-MNIST files;
2. smoke_demo: `spt train configs/demo.yaml` under torchrun, one rank, NCCL (CUDA + NCCL at
   world size 1);
3. step: benchmarks/bench_step.py, bf16, ViT-B/16, ViT-L/16, ViT-H/14 at 224 px, VPT-deep
   p=50 and full fine-tuning, engine vs plain PyTorch: samples/s, MFU, peak memory;
4. packed (GPU only): benchmarks/bench_packed.py, packed G=8 vs 8 configs one after another;
5. serving: benchmarks/bench_serving.py on the GPU, bf16 packs, demo backbone and ViT-B/16:
   T = 1, 5, 20 tasks mixed in one stream vs single-task throughput, and the bank's memory
   vs T separate models (about a minute; the HTTP part is not run here);
6. host_syncs: tests/test_engine_host_sync.py under torch's CUDA sync debug mode, and
   tests/test_serve_device.py (the bank on CUDA answers as on the CPU);
7. smoke_linear_bf16 (the feature cache, bf16) and smoke_zero2_bf16.

`--mode cpu` runs the same sections on the CPU with tiny sizes (gloo, a 28 px backbone, few
images): what a machine without a GPU can check of the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def _run(cmd: List[str], timeout: float, log: Path) -> Dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        rc, out = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        rc, out = "timeout", (exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or "")
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n{out}\n[rc={rc}]\n")
    res = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1)}
    if rc != 0:
        res["tail"] = out[-3000:]
    return res


class Check:
    def __init__(self, out: Path, mode: str, deadline_s: float) -> None:
        self.out, self.mode, self.t0, self.deadline = out, mode, time.perf_counter(), deadline_s
        self.work = Path(os.environ.get("SPT_GPU_WORK", "/tmp/spt_gpu_check"))
        self.log = out / "gpu_check.log"
        self.report: Dict = {"mode": mode, "sections": {}}

    def left(self) -> float:
        return self.deadline - (time.perf_counter() - self.t0)

    def section(self, name: str, need_s: float, fn) -> None:
        if self.left() < need_s:
            self.report["sections"][name] = {"skipped": f"{self.left():.0f} s left of the deadline, needs {need_s}"}
        else:
            try:
                self.report["sections"][name] = fn(min(self.left(), 2 * need_s))
            except Exception as exc:  # one broken section must not lose the others' figures
                self.report["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        self.save()

    def save(self) -> None:
        self.report["seconds"] = round(time.perf_counter() - self.t0, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=1) + "\n")


def environment(mode: str) -> Dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        env.update(device=torch.cuda.get_device_name(), nccl=".".join(map(str, torch.cuda.nccl.version())))
    for mod in ("deepspeed", "timm", "webdataset", "omegaconf"):
        env[mod] = getattr(__import__(mod), "__version__", "?")
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env


def shards(check: Check, fmnist_dir: str, timeout: float) -> Dict:
    out = check.work / "data" / "fmnist_tune"
    if (out / "index.json").is_file():
        return {"reused": str(out)}
    cap = ["--max-per-class", "150"] if check.mode == "cpu" else []
    return _run([PY, "-m", "spt_dist.cli", "shards", "build", "fmnist", "--classes", "5,6,7,8,9", "--out", str(out),
                 "--fmnist-dir", fmnist_dir, "--workers", str(min(8, os.cpu_count() or 1)), "--no-progress", *cap],
                timeout, check.log)


def smoke(check: Check, name: str, extra: List[str], timeout: float) -> Dict:
    backend = "nccl" if check.mode == "gpu" else "gloo"
    tiny = ["data.fraction=1.0", "method.init_images=200", "data.batch_size=32", "optim.epochs=2"] \
        if check.mode == "cpu" else []
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "spt_dist.cli",
           "train", "configs/demo.yaml", f"data.root={check.work / 'data' / 'fmnist_tune'}",
           f"run.out_dir={check.work / 'runs'}", f"run.name={name}", f"distributed.backend={backend}",
           f"method.cache_dir={check.work / 'prototypes'}", "run.progress=false", *tiny, *extra]
    res = _run(cmd, timeout, check.log)
    run_dir = check.work / "runs" / name
    if (run_dir / "results.json").is_file():
        full = json.loads((run_dir / "results.json").read_text())
        res["results"] = {k: full.get(k) for k in ("status", "top1", "val_top1", "step", "device", "dtype",
                                                   "zero_stage", "world_size", "samples_per_s", "train_s", "wall_s")}
        events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        res["feature_cache"] = next((e for e in events if e["event"] == "feature_cache"), None)
    return res


def step(check: Check, timeout: float) -> Dict:
    out = check.out / "step.json"
    if check.mode == "gpu":
        args = ["--device", "cuda", "--dtype", "bf16", "--backbones", "vit_b16,vit_l16,vit_h14", "--batch", "64",
                "--steps", "10", "--rounds", "2"]
    else:
        args = ["--device", "cpu", "--dtype", "bf16", "--backbones", "vit_micro_p4_16", "--batch", "4",
                "--steps", "1", "--rounds", "1"]
    res = _run([PY, "benchmarks/bench_step.py", *args, "--modes", "deep_p50,full", "--out", str(out)], timeout,
               check.log)
    if out.is_file():
        res["figures"] = json.loads(out.read_text())
    return res


def packed(check: Check, timeout: float) -> Dict:
    """Packed G=8 vs the same 8 configs one after another (benchmarks/bench_packed.py, on the
    device the run finds: CUDA here)."""
    out = check.out / "packed.json"
    res = _run([PY, "benchmarks/bench_packed.py", "--out", str(out)], timeout, check.log)
    if out.is_file():
        res["figures"] = json.loads(out.read_text())
    return res


def serving(check: Check, timeout: float) -> Dict:
    """benchmarks/bench_serving.py's throughput and memory sections with the bank on the device
    (`--tiny` on the CPU: the same code path at small sizes)."""
    out = check.out / "serving.json"
    args = ["--device", "cuda", "--dtype", "bf16"] if check.mode == "gpu" else ["--device", "cpu", "--tiny"]
    res = _run([PY, "benchmarks/bench_serving.py", *args, "--vitb", "--sections", "throughput,memory",
                "--out", str(out)], timeout, check.log)
    if out.is_file():
        res["figures"] = json.loads(out.read_text())
    return res


def host_syncs(check: Check, timeout: float) -> Dict:
    res = _run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_engine_host_sync.py",
                "tests/test_serve_device.py"], timeout, check.log)
    res["passed"] = res["rc"] == 0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--mode", choices=["gpu", "cpu"], default="gpu")
    ap.add_argument("--fmnist-dir", default=str(ROOT / ".gpu-data" / "fashion-mnist"))
    ap.add_argument("--deadline-s", type=float, default=450, help="the whole check; sections past it are skipped")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.mode, args.deadline_s)
    if os.environ.get("SPT_GPU_FRESH"):
        shutil.rmtree(check.work, ignore_errors=True)
    check.report["environment"] = environment(args.mode)
    check.save()
    if args.mode == "gpu" and not check.report["environment"]["cuda_available"]:
        raise SystemExit("gpu_check: torch sees no CUDA device")
    check.section("shards", 60, lambda t: shards(check, args.fmnist_dir, t))
    check.section("smoke_demo", 90, lambda t: smoke(check, "demo", [], t))
    check.section("step", 150, lambda t: step(check, t))
    if check.mode == "gpu":  # on the CPU the benchmark itself is the figure (benchmarks/results/packed.json)
        check.section("packed", 90, lambda t: packed(check, t))
    check.section("serving", 60, lambda t: serving(check, t))  # needs come to 390 s up to here
    check.section("host_syncs", 60, lambda t: host_syncs(check, t))
    check.section("smoke_linear_bf16", 45, lambda t: smoke(check, "linear_bf16", [
        "method.name=linear", "precision.dtype=bf16", "optim.epochs=2"], t))
    check.section("smoke_zero2_bf16", 45, lambda t: smoke(check, "zero2_bf16", [
        "precision.dtype=bf16", "distributed.zero_stage=2", "optim.epochs=1"], t))
    failed = [k for k, v in check.report["sections"].items() if v.get("rc", 0) != 0 or "error" in v]
    check.report["failed"] = failed
    check.save()
    print(json.dumps(check.report, indent=1))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
