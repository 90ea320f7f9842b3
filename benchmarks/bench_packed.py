"""Packed training versus the same configs one after another: wall time per config.

G = 8 configs of the demo (configs/demo.yaml: SPT-deep p=8 on the committed vit_tiny_p7_28
backbone, k-means init, batch 64) that differ in optim.lr (4 values) x optim.weight_decay (2),
on synthetic 28 px shards (5 classes; 1,600 training, 400 validation and 400 test images),
2 epochs. Sequential: `train(cfg)` for each config in turn; packed: one `train_pack` of all 8
(one backbone pass per batch over 8 x 64 rows). Both run in this one process, after a
warm-up run (imports, DeepSpeed's first initialisation), each with its own empty prototype
cache and output folder, so both pay the same once-per-process costs (a sequential sweep of
separate `spt train` processes would also pay the imports 8 times: not counted here). The
modes take turns for ROUNDS rounds and each keeps its fastest (the 2-core machine is shared
with other work). `train_steps_s` is the time inside training steps only (no setup,
evaluation, checkpoints), and `step_forward_backward_s` times the model's forward + backward
alone (8 lone passes against one packed pass) at the demo's batch and at batch 8. The trained
tensors of both modes are compared too.

Run: OMP_NUM_THREADS=2 DS_ACCELERATOR=cpu .venv/bin/python benchmarks/bench_packed.py   (as benchmarks/run_all does)
     -> benchmarks/results/packed.json
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "packed.json"
ROUNDS = 2
GRID = "grid: {optim.lr: [0.005, 0.01, 0.02, 0.04], optim.weight_decay: [0.0, 0.0001]}\n"


def _at(cfg, out: Path, cache: Path):
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(out)),
                               method=dataclasses.replace(cfg.method, cache_dir=str(cache)))


def step_times(backbone_file: Path, batches=(8, 64), rounds: int = 5) -> dict:
    """Forward + backward of the demo's model alone: 8 lone passes of B images against one packed
    pass of 8 x B rows (pack_logits), min seconds over `rounds` alternating rounds, per B."""
    import torch
    from torch.nn import functional as F

    from spt_dist.engine.checkpoint import TrainRng
    from spt_dist.engine.pack_step import pack_logits
    from spt_dist.model import PromptedViT, build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("vit_tiny_p7_28", checkpoint=str(backbone_file))
    models = [PromptedViT(backbone, 5, prompt_length=8, deep=True).train() for _ in range(8)]
    rngs = [TrainRng() for _ in models]
    out = {}
    for b in batches:
        x, y = torch.randn(b, 3, 28, 28), torch.randint(0, 5, (b,))
        modes = {"lone_x8": lambda: [F.cross_entropy(m(x), y).backward() for m in models],
                 "packed": lambda: sum(F.cross_entropy(z, y) for z in pack_logits(models, rngs, x)).backward()}
        times = {k: [] for k in modes}
        for _ in range(rounds):
            for k, f in modes.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
        best = {k: min(v) for k, v in times.items()}
        out[f"batch_{b}"] = {**{k: round(v, 4) for k, v in best.items()},
                             "ratio": round(best["lone_x8"] / best["packed"], 3)}
    return out


def main() -> None:
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT))
    out = Path(ap.parse_args().out)
    from safetensors.torch import load_file

    from spt_dist.config.pack import load_pack
    from spt_dist.data.synthetic import tiny_shards
    from spt_dist.engine.pack import train_pack
    from spt_dist.engine.train import train
    from spt_dist.rundir import run_dir_for

    tmp = Path(tempfile.mkdtemp(prefix="bench_packed_"))
    tiny_shards(tmp / "shards", {"train": [800, 800], "val": [400], "test": [400]}, num_classes=5, size=28)
    (tmp / "pack.yaml").write_text(GRID)
    overrides = [f"data.root={tmp / 'shards'}", "data.fraction=1.0", "optim.epochs=2", "optim.warmup_epochs=0.5",
                 "method.init_images=512", "run.progress=false", "run.loggers=[]",
                 f"model.checkpoint={ROOT / 'spt_dist/assets/vit_tiny_p7_28_fmnist04.safetensors'}"]
    cfgs = [m.cfg for m in load_pack(str(ROOT / "configs" / "demo.yaml"), str(tmp / "pack.yaml"), overrides)]
    warm = time.perf_counter()
    train(dataclasses.replace(_at(cfgs[0], tmp / "warm", tmp / "cache_warm"),
                              optim=dataclasses.replace(cfgs[0].optim, epochs=1)))
    warm = time.perf_counter() - warm

    # The machine is shared: the modes take turns for ROUNDS rounds and each keeps its fastest.
    rounds = {"sequential": [], "packed": []}
    for r in range(ROUNDS):
        t = time.perf_counter()
        seq = [train(_at(c, tmp / f"sequential{r}", tmp / f"cache_seq{r}")) for c in cfgs]
        rounds["sequential"].append((time.perf_counter() - t, sum(x["train_s"] for x in seq)))
        t = time.perf_counter()
        packed = train_pack([_at(c, tmp / f"packed{r}", tmp / f"cache_pack{r}") for c in cfgs])
        rounds["packed"].append((time.perf_counter() - t, packed[0]["train_s"]))
    seq_s, seq_train = min(rounds["sequential"])
    pack_s, pack_train = min(rounds["packed"])

    steps = step_times(ROOT / "spt_dist/assets/vit_tiny_p7_28_fmnist04.safetensors")
    diffs = []
    for c in cfgs:
        a = load_file(str(run_dir_for(_at(c, tmp / "sequential0", tmp / "cache_seq0")) / "prompt_pack.safetensors"))
        b = load_file(str(run_dir_for(_at(c, tmp / "packed0", tmp / "cache_pack0")) / "prompt_pack.safetensors"))
        diffs.append(max(float((a[k] - b[k]).abs().max()) for k in a))
    g = len(cfgs)
    report = {
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads(),
                    "load_avg_at_end": os.getloadavg()},
        "setup": {"configs": g, "grid": GRID.strip(), "base": "configs/demo.yaml", "overrides": overrides[1:],
                  "train_images": 1600, "val_images": 400, "test_images": 400, "batch_size": cfgs[0].data.batch_size,
                  "steps_per_run": seq[0]["step"]},
        "warmup_s": round(warm, 2),
        "sequential_s": round(seq_s, 2), "packed_s": round(pack_s, 2),
        "sequential_s_per_config": round(seq_s / g, 3), "packed_s_per_config": round(pack_s / g, 3),
        "ratio": round(seq_s / pack_s, 3),
        # time inside training steps only (no setup, evaluation, checkpoints): the backbone pass itself
        "train_steps_s": {"sequential": round(seq_train, 2), "packed": round(pack_train, 2),
                          "ratio": round(seq_train / pack_train, 3)},
        # forward + backward only, 8 lone passes vs one packed pass, at the demo's batch and at 8
        "step_forward_backward_s": steps,
        "rounds": {k: [[round(w, 2), round(t, 2)] for w, t in v] for k, v in rounds.items()},  # [wall, train_s]
        "max_abs_diff_packed_vs_sequential": max(diffs),
        "top1": {"sequential": [r["top1"] for r in seq], "packed": [r["top1"] for r in packed]},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
