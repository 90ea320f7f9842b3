"""Class-ordered data: how well batches mix and what it does to accuracy, per reader, in ONE run.

A Fashion-MNIST image-folder tree (classes 5-9, which the demo backbone never saw; 1,000
training and 200 test images per class), listed class by class as users' folders are, is
sharded two ways: in source order (class-pure 1,000-sample shards, as foreign tools write
them) and by `spt shards build` (which permutes every split first). Then, on the demo
backbone, full fine-tuning and a linear probe are trained with

- the previous reader's behaviour: stream, one shard at a time, 1,000-sample buffer,
- stream as it is now (4 shards interleaved per worker, 1,000-sample buffer),
- the exact shuffle (the default),
- stream on the permuted shards,
- a plain PyTorch loop with a fresh permutation every epoch (tests/plain_loop.py),

reporting distinct classes per batch (planned, against a uniform permutation's expectation)
and test top-1. The mixing check is switched off so that the badly mixed readers can run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_mixing.py      # ~10 minutes on 2 cores

Writes benchmarks/results/mixing.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
BACKBONE = ROOT / "spt_dist" / "assets" / "vit_tiny_p7_28_fmnist04.safetensors"
RECIPES = {"full": {"lr": 0.001, "epochs": 6}, "linear": {"lr": 0.01, "epochs": 6}}
BATCH = 64
READERS = {
    "stream, 1 shard at a time (previous reader)": ("pure", ["data.shuffle=stream", "data.stream_shards=1"]),
    "stream, 4 shards interleaved": ("pure", ["data.shuffle=stream"]),
    "exact shuffle (default)": ("pure", []),
    "stream on shards built by `spt shards build`": ("built", ["data.shuffle=stream"]),
}


def _run(shards: Path, out: Path, method: str, extra, name: str) -> dict:
    from spt_dist.config import load_config
    from spt_dist.engine.train import train

    r = RECIPES[method]
    cfg = load_config(None, [
        "model.name=vit_tiny_p7_28", f"model.checkpoint={BACKBONE}", f"method.name={method}",
        "method.prompt_length=0", "method.init=vpt", f"data.root={shards}", "data.val_split=null",
        f"data.batch_size={BATCH}", "data.mixing_check=ignore", "optim.name=adamw", f"optim.lr={r['lr']}",
        f"optim.epochs={r['epochs']}", "optim.warmup_epochs=0", "run.progress=false", f"run.out_dir={out}",
        f"run.name={name}", *extra])
    t0 = time.perf_counter()
    res = train(cfg)
    events = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    start = next(e for e in events if e["event"] == "start")
    return {"top1": res["top1"], "classes_per_batch": start["mixing_classes_per_batch"],
            "uniform_classes_per_batch": start["mixing_uniform_classes_per_batch"],
            "mixing_ratio": start["mixing_ratio"], "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    from plain_loop import plain_top1

    from spt_dist.data import write_shards
    from spt_dist.data.sources import fmnist_source, folder_source
    from spt_dist.data.synthetic import write_image_tree

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mixing.json"))
    args = parser.parse_args()
    results = {"backbone": "vit_tiny_p7_28 (demo, pretrained on classes 0-4)", "batch_size": BATCH,
               "train_per_class": args.per_class, "test_per_class": 200, "recipes": RECIPES, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tree = write_image_tree(fmnist_source(classes=[5, 6, 7, 8, 9], val_fraction=0.0), tmp / "tree",
                                {"train": args.per_class, "test": 200})
        shards = {"pure": tmp / "pure", "built": tmp / "built"}
        write_shards(folder_source(str(tree)), str(shards["pure"]), shard_size=1000, progress=False, shuffle=False)
        write_shards(folder_source(str(tree)), str(shards["built"]), shard_size=1000, progress=False)
        for method, recipe in RECIPES.items():
            rows = {}
            for i, (label, (kind, extra)) in enumerate(READERS.items()):
                rows[label] = _run(shards[kind], tmp / "runs", method, extra, f"{method}{i}")
                print(f"{method:6} {label:48} top1 {rows[label]['top1']:6.2f}  classes/batch "
                      f"{rows[label]['classes_per_batch']:.2f} (uniform {rows[label]['uniform_classes_per_batch']:.2f})",
                      flush=True)
            torch.set_num_threads(max(1, torch.get_num_threads()))
            plain = plain_top1(tree, BACKBONE, method, recipe["epochs"], BATCH, recipe["lr"])
            rows["plain PyTorch loop, randperm every epoch"] = {"top1": plain}
            print(f"{method:6} {'plain PyTorch loop':48} top1 {plain:6.2f}", flush=True)
            results["methods"][method] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
