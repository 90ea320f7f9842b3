"""Size and save / load time of the whole optimizer state an elastic ZeRO 1-3 run writes beside
DeepSpeed's per-rank partitions (engine/zero_state.py), for a realistic prompt-tuning state.

    OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu .venv/bin/python benchmarks/bench_elastic_state.py [--repeats 5] [--stage 3]

The trainable tensors of ViT-B/16 VPT-deep with 50 prompts and a 100-class head (prompts
12 x 50 x 768, head 768 x 100 + 100; the frozen backbone holds no optimizer state and is left out
of checkpoints), AdamW, ZeRO 2 (or `--stage 3`), one CPU rank (gloo). One step makes the state.
Timed, median of `--repeats`: DeepSpeed's save_checkpoint (module file of the trainable tensors
+ the optimizer partitions, as the engine calls it), zero_state.save_full (optimizer_full.pt),
DeepSpeed's load_checkpoint with its partitions, and the load of a resume on another world size
(ZeRO 2: DeepSpeed's module-only load + zero_state.load_full; ZeRO 3: zero_state.load_z3_counters
+ load_full, as the engine does). Then, once, DeepSpeed's offline universal-checkpoint conversion
of the same checkpoint (`python -m deepspeed.checkpoint.ds_to_universal`, a process of its own,
as a requeued job would have to run before its ranks load): its wall time and output size, or
its error. Writes benchmarks/results/elastic_state.json (ZeRO 3: elastic_state_zero3.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEPTH, PROMPTS, DIM, CLASSES = 12, 50, 768, 100


def _model():
    import torch
    from torch import nn

    class Trainable(nn.Module):  # the trainable tensors of PromptedViT, by shape
        def __init__(self) -> None:
            super().__init__()
            self.prompts = nn.Parameter(torch.randn(DEPTH, PROMPTS, DIM) * 0.02)
            self.head = nn.Linear(DIM, CLASSES)

        def forward(self) -> "torch.Tensor":
            return (self.prompts ** 2).mean() + self.head(self.prompts.mean((0, 1))).square().mean()

    return Trainable()


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 4)


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _universal(ckpt: Path, out: Path) -> dict:
    """DeepSpeed's universal-checkpoint conversion of `ckpt`, in a process of its own."""
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt),
           "--output_folder", str(out), "--num_extract_workers", "1", "--num_merge_workers", "1",
           "--inject_missing_state"]  # without it: "Required universal_checkpoint_info state is missing"
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    wall = round(time.perf_counter() - t0, 2)
    if proc.returncode != 0:
        return {"ok": False, "wall_s": wall, "error": (proc.stderr or proc.stdout).strip().splitlines()[-3:]}
    return {"ok": True, "wall_s": wall, "bytes": _bytes(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stage", type=int, choices=(2, 3), default=2, help="the ZeRO stage")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/elastic_state[_zero3].json")
    args = ap.parse_args()
    args.out = args.out or str(ROOT / "benchmarks" / "results" /
                               ("elastic_state.json" if args.stage == 2 else "elastic_state_zero3.json"))
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import torch

    from spt_dist.distributed import init_distributed
    from spt_dist.engine import zero_state
    from spt_dist.engine.ds_engine import build_engine

    init_distributed("gloo", 120)
    torch.manual_seed(0)
    model = _model()
    optimizer = torch.optim.AdamW([{"params": [model.prompts], "weight_decay": 0.0},
                                   {"params": list(model.head.parameters()), "weight_decay": 0.01}], lr=1e-3)
    ds = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": 1,
          "zero_optimization": {"stage": args.stage}, "steps_per_print": 10 ** 9}
    if args.stage == 3:  # as the engine configures it (engine/ds_engine.py)
        ds["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    trainable = sum(p.numel() for p in model.parameters())  # before ZeRO 3 partitions them
    engine, _, _ = build_engine(model, optimizer, None, ds)
    loss = engine()
    engine.backward(loss)
    engine.step()
    tmp = Path(tempfile.mkdtemp(prefix="elastic_state_"))
    try:
        part, full = tmp / "ds", tmp / "full"
        full.mkdir()

        def save_partitioned() -> None:
            shutil.rmtree(part, ignore_errors=True)
            engine.save_checkpoint(str(part), tag="ckpt", save_latest=False, exclude_frozen_parameters=True)

        def load_partitioned() -> None:
            engine.load_checkpoint(str(part), tag="ckpt", load_module_strict=False, load_optimizer_states=True,
                                   load_lr_scheduler_states=True)

        def load_repartitioned() -> None:
            if args.stage == 3:
                zero_state.load_z3_counters(engine, part / "ckpt")
            else:
                engine.load_checkpoint(str(part), tag="ckpt", load_module_strict=False, load_optimizer_states=False,
                                       load_lr_scheduler_states=True)
            zero_state.load_full(engine, full)

        save_part_s = _median_s(save_partitioned, args.repeats)
        save_full_s = _median_s(lambda: zero_state.save_full(engine, full, True), args.repeats)
        files = {p.name: p.stat().st_size for p in part.rglob("*") if p.is_file()}
        result = {
            "state": f"ViT-B/16 VPT-deep p={PROMPTS}, {CLASSES}-class head: {trainable} trainable fp32 values, "
                     f"AdamW, ZeRO {args.stage}, 1 CPU rank",
            "trainable_values": trainable,
            "adamw_state_bytes_expected": trainable * 4 * 3,  # fp32 master + exp_avg + exp_avg_sq
            "deepspeed_checkpoint_bytes": _bytes(part),
            "deepspeed_files": files,
            "optimizer_full_bytes": (full / zero_state.FILE).stat().st_size,
            "save_deepspeed_s": save_part_s,
            "save_full_s": save_full_s,
            "load_deepspeed_s": _median_s(load_partitioned, args.repeats),
            "load_module_and_full_s": _median_s(load_repartitioned, args.repeats),
            "repeats": args.repeats,
            "torch": torch.__version__,
        }
        import deepspeed

        result["deepspeed"] = deepspeed.__version__
        result["universal"] = _universal(part / "ckpt", tmp / "universal")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
