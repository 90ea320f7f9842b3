"""Training step throughput: the real engine against a minimal plain PyTorch loop, same model.

Per backbone and mode (VPT-deep p=50 or full fine-tuning; random weights, 200 classes) and one
fixed batch, samples/s of
- engine: spt_dist's step as the training loop runs it: DeepSpeed built from the run's own
  deepspeed_config / optimizer / scheduler (ZeRO 0), `train_step`, and `StepVote.vote` at
  every optimizer step (its all-reduce and read-back included);
- plain: `loss = cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad()`
  with torch's AdamW on a second copy of the same model (bf16: autocast over fp32 weights,
  the plain PyTorch recipe; DeepSpeed instead keeps bf16 weights and an fp32 master copy).
The two take turns in rounds; each round times `--steps` steps and the best round counts, so
load from other processes on a shared machine hits both alike. On CUDA the timed span ends
with a synchronize; peak memory is torch's max_memory_allocated during each path's steps, and
model FLOP utilisation counts the matmul FLOPs a step needs (forward; backward to the inputs;
weight gradients only for trained weights: prompt tuning about 2x the forward, full 3x)
against the chip's dense bf16 peak.

Run: OMP_NUM_THREADS=2 python benchmarks/bench_step.py            -> benchmarks/results/step.json
     python benchmarks/bench_step.py --device cuda --dtype bf16 --backbones vit_b16,vit_l16,vit_h14 \
         --batch 64 --out OUT.json                                 (benchmarks/gpu_check.sh does this)
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
from torch.nn import functional as F

OUT = Path(__file__).resolve().parent / "results" / "step.json"
MODES = {"deep_p50": (50, True, False), "full": (0, False, True), "linear": (0, False, False)}
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense, datasheets


def model_flops(model, batch: int, mode: str) -> float:
    """Matmul FLOPs of one training step (multiply-add = 2)."""
    b = model.backbone
    n = b.patch_embed.num_patches + model.num_prefix_tokens + model.prompt_length
    d, depth = model.embed_dim, model.depth
    ph, pw = b.patch_embed.patch_size
    forward = depth * (24 * n * d * d + 4 * n * n * d) + 2 * b.patch_embed.num_patches * 3 * ph * pw * d
    if MODES[mode][2]:
        return 3.0 * batch * forward
    return 2.0 * batch * forward  # activations' gradients only; the head's weights are negligible


def build(backbone: str, mode: str, device: torch.device):
    from spt_dist.model import PromptedViT, build_backbone

    torch.manual_seed(0)
    p, deep, full = MODES[mode]
    return PromptedViT(build_backbone(backbone), num_classes=200, prompt_length=p, deep=deep,
                       train_backbone=full).to(device).train()


def engine_step(model, dtype: str, batch: int) -> Callable:
    from spt_dist.config import load_config
    from spt_dist.distributed import Comm
    from spt_dist.engine.checkpoint import TrainRng
    from spt_dist.engine.ds_engine import build_engine, deepspeed_config, engine_precision
    from spt_dist.engine.optim import build_optimizer, build_scheduler, param_groups
    from spt_dist.engine.step import StepVote, train_step

    cfg = load_config(None, [f"precision.dtype={dtype}", f"data.batch_size={batch}", "optim.name=adamw",
                             "optim.lr=1e-4", "optim.warmup_epochs=0", "optim.epochs=1", "optim.weight_decay=0.01"])
    optimizer = build_optimizer(param_groups(model.named_parameters(), cfg.optim), cfg.optim, cfg.optim.lr)
    scheduler = build_scheduler(optimizer, cfg.optim, 10 ** 6, cfg.optim.lr, 0.0)
    engine, _, _ = build_engine(model, optimizer, scheduler, deepspeed_config(cfg, 1))
    _, model_dtype = engine_precision(engine)
    vote, rng = StepVote(Comm(), engine.device), TrainRng()
    engine.train()

    def step(x, y):
        vote.add(train_step(engine, x, y, model_dtype, rng, 0.0))
        vote.vote("", False, 0)
    step.engine = engine
    return step


def plain_step(model, dtype: str, device: torch.device) -> Callable:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, **({"fused": True} if device.type == "cuda" else {}))
    bf16 = dtype == "bf16"

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x.to(device, non_blocking=True))
        loss = F.cross_entropy(logits.float(), y.to(device, non_blocking=True))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(backbone: str, mode: str, dtype: str, batch: int, steps: int, rounds: int, device: torch.device,
            peak: float = None) -> Dict:
    img = build(backbone, "linear", torch.device("meta")).backbone.patch_embed.img_size[0]
    x = torch.randn(batch, 3, img, img).pin_memory() if device.type == "cuda" else torch.randn(batch, 3, img, img)
    y = torch.randint(0, 200, (batch,))
    paths = {"engine": engine_step(build(backbone, mode, device), dtype, batch),
             "plain": plain_step(build(backbone, mode, device), dtype, device)}
    best = {k: float("inf") for k in paths}
    memory = {}
    for r in range(rounds + 1):  # round 0 warms up (allocator, kernels) and is not counted
        for name, step in paths.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                step(x, y)
            _sync(device)
            if r:
                best[name] = min(best[name], (time.perf_counter() - t) / steps)
            if device.type == "cuda":
                memory[name] = torch.cuda.max_memory_allocated()
    flops = model_flops(build(backbone, mode, torch.device("meta")), batch, mode)
    out = {"backbone": backbone, "mode": mode, "dtype": dtype, "batch": batch, "img_size": img,
           "step_flops": flops, "engine_over_plain": round(best["engine"] / best["plain"], 4)}
    for name in paths:
        out[name] = {"s_per_step": round(best[name], 5), "samples_per_s": round(batch / best[name], 2),
                     "tflops": round(flops / best[name] / 1e12, 2)}
        if peak:
            out[name]["mfu"] = round(flops / best[name] / peak, 4)
        if name in memory:
            out[name]["peak_memory_gib"] = round(memory[name] / 2 ** 30, 2)
    del paths
    _free(device)
    return out


def matmul_tflops(device: torch.device, n: int = 8192, reps: int = 10) -> float:
    """Measured bf16 matmul rate on this chip: the ceiling the step can hope for."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def main(argv: List[str] = None) -> Dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--backbones", default="vit_s16,vit_tiny_p7_28")
    ap.add_argument("--modes", default="deep_p50,full")
    ap.add_argument("--batch", type=int, default=8, help="per-step batch (CPU default; GPU: 64)")
    ap.add_argument("--batches", default="", help="per-backbone batch, e.g. vit_tiny_p7_28=64")
    ap.add_argument("--steps", type=int, default=3, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    from spt_dist.distributed import init_distributed

    dist = init_distributed("nccl" if args.device == "cuda" else "gloo", 600)
    device = dist.device
    per = dict(kv.split("=") for kv in args.batches.split(",") if kv)
    result = {"machine": _machine(device), "dtype": args.dtype, "torch": torch.__version__, "runs": []}
    peak = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        result.update(peak_bf16_tflops=peak and peak / 1e12, measured_matmul_bf16_tflops=round(matmul_tflops(device), 1))
    for backbone in args.backbones.split(","):
        for mode in args.modes.split(","):
            run = measure(backbone, mode, args.dtype, int(per.get(backbone, args.batch)), args.steps, args.rounds,
                          device, peak if args.dtype == "bf16" else None)
            result["runs"].append(run)
            result["summary"] = {"engine_over_plain_max": max(r["engine_over_plain"] for r in result["runs"])}
            print(json.dumps(run), flush=True)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")  # what is done so far survives a timeout
    return result


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


if __name__ == "__main__":
    main()
