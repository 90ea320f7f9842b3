"""Prototype init: time against one prompt-tuning epoch, and peak memory at N and 4N images,
streaming (spt_dist) versus the published code's whole-data-in-one-batch approach.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_prompt_init.py [--images 2000] [--device cpu]

Data: real Fashion-MNIST training images (Debian's dataset-fashion-mnist; random images if
absent) through the pretrained demo backbone shipped in spt_dist/assets (vit_tiny_p7_28, width
96, 4 blocks, 16 patches). SPT-deep, k-means, p=8. Every memory figure comes from a fresh
process: peak RSS (VmHWM) minus the RSS after model and data setup, so imports do not count.
Writes benchmarks/results/prompt_init.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
BACKBONE, CHECKPOINT = "vit_tiny_p7_28", ROOT / "spt_dist/assets/vit_tiny_p7_28_fmnist04.safetensors"
P, CAPACITY, BATCH, ITERS, TOL = 8, 4096, 64, 30, 1e-4


_SOURCE: Dict[str, np.ndarray] = {}


def _load_source() -> None:
    """The uint8 training images (47 MB), read once before any measurement: they stand for the
    data on disk, not for memory of the init."""
    from spt_dist.data.sources.builtin import FMNIST_DIR, read_idx

    path = Path(FMNIST_DIR) / "train-images-idx3-ubyte.gz"
    if path.is_file():
        _SOURCE["fmnist"] = np.ascontiguousarray(read_idx(path))
    else:
        _SOURCE["fmnist"] = np.random.default_rng(0).integers(0, 256, (60000, 28, 28), dtype=np.uint8)


def _images(n: int, offset: int = 0) -> torch.Tensor:
    """n normalised (3, 28, 28) images made on demand (the streaming path asks per batch)."""
    from spt_dist.model import normalization

    raw = torch.from_numpy(_SOURCE["fmnist"][offset:offset + n].astype(np.float32) / 255.0)
    mean, std = normalization(BACKBONE)
    x = raw[:, None].expand(-1, 3, -1, -1)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _model(device: str):
    from spt_dist.model import PromptedViT, build_backbone

    torch.manual_seed(0)
    bb = build_backbone(BACKBONE, checkpoint=str(CHECKPOINT) if CHECKPOINT.is_file() else None)
    return PromptedViT(bb, 10, prompt_length=P, deep=True).to(device)


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS


def _streaming(n: int, device: str) -> Dict[str, float]:
    from spt_dist.distributed import Comm
    from spt_dist.prompt_init.extract import stream_candidates
    from spt_dist.prompt_init.pass_plan import InitPlan
    from spt_dist.prompt_init.prototypes import combine

    model = _model(device)

    def batches():
        for s in range(0, n, BATCH):
            m = min(BATCH, n - s)
            yield _images(m, s), torch.zeros(m), [f"train{s + i}" for i in range(m)]

    plan = InitPlan(("kmeans",), model.depth, P, CAPACITY, 0, ITERS, TOL)
    base = _rss_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    pools, _ = stream_candidates(model, batches(), plan, device)
    t1 = time.perf_counter()
    combine(pools, plan, Comm(0, 1))
    t2 = time.perf_counter()
    return {"extract_s": t1 - t0, "combine_s": t2 - t1, "seconds": t2 - t0,
            "peak_mib": (_rss_kb("VmHWM") - base) / 1024}


def _one_batch(n: int, device: str) -> Dict[str, float]:
    """The published code's way: all images in one batch, all tokens concatenated, then clustered."""
    from spt_dist.distributed import Comm
    from spt_dist.prompt_init.kmeans import kmeans

    model = _model(device)
    base = _rss_kb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    with torch.no_grad():
        tokens = model.layer_tokens(_images(n).to(device))
        protos = [kmeans(t.flatten(0, 1), P, ITERS, TOL, 0, Comm(0, 1)).centroids for t in tokens]
    return {"seconds": time.perf_counter() - t0, "peak_mib": (_rss_kb("VmHWM") - base) / 1024,
            "layers": len(protos)}


def _epoch(n: int, device: str) -> Dict[str, float]:
    """One prompt-tuning epoch on the same n images: forward + backward + AdamW, batch 64."""
    model = _model(device)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0))
    images = _images(n)
    t0 = time.perf_counter()  # the epoch gets its images ready-made: init pays for making them
    for s in range(0, n, BATCH):
        x, y = images[s:s + BATCH].to(device), labels[s:s + BATCH].to(device)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t0}


def _child(fn_name: str, n: int, device: str, queue) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _load_source()
    queue.put(globals()[fn_name](n, device))


def _fresh(fn_name: str, n: int, device: str) -> Dict[str, float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn_name, n, device, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000, help="N; memory is also measured at 4N")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/prompt_init.json"))
    args = ap.parse_args()
    n, dev = args.images, args.device
    res = {"setup": {"backbone": BACKBONE, "deep": True, "strategy": "kmeans", "prompt_length": P,
                     "candidates": CAPACITY, "batch": BATCH, "kmeans_iters": ITERS, "images": n,
                     "device": dev, "threads": int(os.environ.get("OMP_NUM_THREADS", "0")),
                     "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}}
    res["streaming"] = {str(k): _fresh("_streaming", k, dev) for k in (n, 4 * n)}
    res["one_batch"] = {str(k): _fresh("_one_batch", k, dev) for k in (n, 4 * n)}
    res["epoch"] = _fresh("_epoch", n, dev)
    init_s, epoch_s = res["streaming"][str(n)]["seconds"], res["epoch"]["seconds"]
    res["summary"] = {
        "init_over_epoch": init_s / epoch_s,
        "init_share_of_100_epoch_run_pct": 100 * init_s / (init_s + 100 * epoch_s),
        "streaming_peak_mib": [res["streaming"][str(k)]["peak_mib"] for k in (n, 4 * n)],
        "one_batch_peak_mib": [res["one_batch"][str(k)]["peak_mib"] for k in (n, 4 * n)],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res["summary"], indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
