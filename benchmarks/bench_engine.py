"""Engine figures: step time of prompt tuning vs full fine-tuning, and state / checkpoint bytes.

1. Seconds per training step (forward + backward + AdamW step, batch 8, 224 px) of VPT
   shallow and deep (p=10 and p=50), of the linear probe and of full fine-tuning on the same
   ViT-S/16, single process, OMP_NUM_THREADS threads. Prompt tuning skips the weight
   gradients of the frozen layers (about 1/3 of the FLOPs of a step) but adds p tokens.
2. Optimizer state and checkpoint bytes of VPT-deep (p=50, 200 classes) versus full
   fine-tuning for ViT-B/16, ViT-L/16, ViT-H/14: parameter counts from the registry
   (models built on the meta device), bytes per parameter from a real torch.save of a
   small AdamW state (measured below), fp32.

Run: OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_engine.py  -> benchmarks/results/engine.json
"""
from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from spt_dist.model import PromptedViT, build_backbone

OUT = Path(__file__).resolve().parent / "results" / "engine.json"


# mode -> (prompt_length, deep, train_backbone)
MODES = {"full": (0, False, True), "linear": (0, False, False),
         "shallow_p10": (10, False, False), "deep_p10": (10, True, False),
         "shallow_p50": (50, False, False), "deep_p50": (50, True, False)}


def _setup(backbone: str, mode: str):
    torch.manual_seed(0)
    p, deep, full = MODES[mode]
    model = PromptedViT(build_backbone(backbone), num_classes=200, prompt_length=p, deep=deep,
                        train_backbone=full).train()
    return model, torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)


def step_times(backbone: str, batch: int = 8, rounds: int = 5) -> dict:
    """Min seconds per step per mode; the modes take turns so that load from other processes
    on a shared machine hits them alike."""
    setups = {mode: _setup(backbone, mode) for mode in MODES}
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, 200, (batch,))
    times = {mode: [] for mode in setups}
    for r in range(rounds + 1):  # round 0 warms allocators up and is not counted
        for mode, (model, opt) in setups.items():
            t = time.perf_counter()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if r:
                times[mode].append(time.perf_counter() - t)
    return {mode: min(v) for mode, v in times.items()}


def adamw_bytes_per_param(n: int = 1_000_000) -> dict:
    """Measured: bytes of a torch.save'd AdamW state (+ the weights) per parameter."""
    w = torch.nn.Parameter(torch.zeros(n))
    opt = torch.optim.AdamW([w])
    w.grad = torch.ones(n)
    opt.step()
    buf_state, buf_all = io.BytesIO(), io.BytesIO()
    torch.save(opt.state_dict(), buf_state)
    torch.save({"w": w.detach(), "opt": opt.state_dict()}, buf_all)
    return {"optimizer_state": buf_state.tell() / n, "checkpoint": buf_all.tell() / n}


def capacities(bpp: dict, p: int = 50, classes: int = 200) -> dict:
    out = {}
    for name in ("vit_b16", "vit_l16", "vit_h14"):
        with torch.device("meta"):
            model = PromptedViT(build_backbone(name), classes, prompt_length=p, deep=True)
        c = model.param_counts()
        full = c["backbone"] + c["head"]
        out[name] = {
            "backbone_params": c["backbone"], "vpt_deep_trainable_params": c["trainable"],
            "vpt_deep_optimizer_state_bytes": round(c["trainable"] * bpp["optimizer_state"]),
            "full_optimizer_state_bytes": round(full * bpp["optimizer_state"]),
            "vpt_deep_checkpoint_bytes": round(c["trainable"] * bpp["checkpoint"]),
            "full_checkpoint_bytes": round(full * bpp["checkpoint"]),
            "ratio_full_over_vpt": round(full / c["trainable"], 1),
        }
    return out


def main() -> None:
    backbone = os.environ.get("BENCH_BACKBONE", "vit_s16")
    times = step_times(backbone)
    bpp = adamw_bytes_per_param()
    result = {
        "machine": f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "step_time": {"backbone": backbone, "batch": 8, "img_size": 224,
                      "seconds_per_step": {k: round(v, 3) for k, v in times.items()},
                      "over_full": {k: round(v / times["full"], 3) for k, v in times.items()}},
        "adamw_fp32_bytes_per_param": bpp,
        "capacities_vpt_deep_p50_200_classes": capacities(bpp),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
