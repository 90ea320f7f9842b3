"""The two data caches, measured end to end through `train()` (one process, CPU), in ONE run.

1. Feature cache (method.feature_cache): a linear probe on a VTAB-sized split (1,000 training
   and 200 validation images, validation every epoch, no test pass: a tuning-stage run),
   100 epochs, batch 32, AdamW, checkpoints every 50 steps, with the cache (auto) and without
   (never). Two backbones:
   - the demo backbone (vit_tiny_p7_28, its committed Fashion-MNIST weights; classes 5-9,
     28 px, preset small): both runs trained for all 100 epochs;
   - ViT-S/16 at 224 px with random weights (preset vtab, 256 px JPEGs): the cached run trains
     all 100 epochs; the plain one is stopped after `--plain-epochs` epochs and its 100-epoch
     wall time is its start-up plus 100 times its measured epoch (each of its epochs does the
     same work: decode, backbone, head), read off the time stamps in metrics.jsonl.
   Both runs' head and validation top-1 are compared (same numbers within float summation order).
2. Decoded-sample cache (data.cache_mb, 2048 by default, versus 0): FGVC-like input, 1,000 JPEGs
   at 448 px (preset fgvc: short side to 32, random 28 px crop + flip; 64 validation images scored
   once, at the end), VPT-deep p=8 on the demo backbone, batch 32, `--decoded-epochs` epochs, data.num_workers 0 and 2: training samples/s
   of the epochs after the first (from metrics.jsonl time stamps) and overall (results.json); and
   the reader alone (TrainData epochs, no model) with and without the cache.

Both runs of a pair are in one process, after the imports (timm, DeepSpeed), so neither pays
them. A section not asked for (--sections, --skip-vit-s) keeps its figures in the JSON; each
section records its date and the load average at its end.

Run: OMP_NUM_THREADS=2 python benchmarks/bench_caches.py   -> benchmarks/results/caches.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
OUT = HERE / "results" / "caches.json"
DEMO_WEIGHTS = ROOT / "spt_dist" / "assets" / "vit_tiny_p7_28_fmnist04.safetensors"


def _shards(tree: Path, out: Path) -> Path:
    from spt_dist.data.sources.folder import folder_source
    from spt_dist.data.writer import write_shards

    write_shards(folder_source(str(tree)), str(out), shard_size=256, workers=1, progress=False, log=lambda s: None)
    return out


def fmnist_split(work: Path) -> Path:
    """Fashion-MNIST classes 5-9: 200 training and 40 validation images per class."""
    from spt_dist.data.sources.builtin import fmnist_source
    from spt_dist.data.synthetic import write_image_tree

    tree = write_image_tree(fmnist_source([5, 6, 7, 8, 9]), work / "fmnist_tree", {"train": 200, "val": 40})
    return _shards(tree, work / "fmnist_shards")


def jpeg_split(work: Path, name: str, size: int, train: int, val: int) -> Path:
    from bench_data import make_jpegs

    make_jpegs(work / name / "train", train, size)
    make_jpegs(work / name / "val", val, size, seed=1)
    return _shards(work / name, work / f"{name}_shards")


def _events(run_dir: Path) -> List[Dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _train(config: List[str], name: str, out: Path, max_steps: int = None) -> Dict:
    from spt_dist.config import load_config
    from spt_dist.engine.train import train

    cfg = load_config(None, [*config, f"run.out_dir={out}", f"run.name={name}", "run.progress=false"])
    t0 = time.perf_counter()
    result = train(cfg, max_steps=max_steps)
    result["measured_wall_s"] = round(time.perf_counter() - t0, 3)
    return result


def _head(run_dir: Path) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "prompt_pack.safetensors"))


def linear_probe(shards: Path, model: List[str], out: Path, label: str, epochs: int,
                 plain_epochs: int = 0) -> Dict:
    base = [*model, "method.name=linear", "data.train_split=train", "data.val_split=val",
            "data.test_split=null", f"data.root={shards}", "data.batch_size=32", "optim.name=adamw",
            "optim.lr=0.001", f"optim.epochs={epochs}", f"optim.warmup_epochs={epochs / 10}", "run.loggers=[]"]
    cached = _train([*base, "method.feature_cache=auto"], f"{label}_cached", out)
    steps_per_epoch = cached["step"] // epochs
    plain = _train([*base, "method.feature_cache=never"], f"{label}_plain", out,
                   max_steps=plain_epochs * steps_per_epoch if plain_epochs else None)
    report = {"cached": _summary(cached), "plain": _summary(plain)}
    fc = [e for e in _events(out / f"{label}_cached") if e["event"] == "feature_cache"][0]
    report["feature_pass_s"] = fc["seconds"]
    if plain_epochs:
        vals = [e["time"] for e in _events(out / f"{label}_plain") if e["event"] == "val"]
        epoch_s = (vals[-1] - vals[0]) / (len(vals) - 1)
        before = plain["measured_wall_s"] - plain_epochs * epoch_s  # start-up, first checks
        report["plain"].update(epochs_trained=plain_epochs, epoch_s=round(epoch_s, 3),
                               wall_s_all_epochs=round(before + epochs * epoch_s, 1))
        plain_wall = report["plain"]["wall_s_all_epochs"]
    else:
        plain_wall = plain["measured_wall_s"]
        a, b = _head(out / f"{label}_cached"), _head(out / f"{label}_plain")
        report["max_abs_head_diff"] = max(float((a[k] - b[k]).abs().max()) for k in a)
    report["speedup"] = round(plain_wall / cached["measured_wall_s"], 1)
    return report


def _summary(result: Dict) -> Dict:
    keys = ("status", "step", "val_top1", "best_val_top1", "wall_s", "train_s", "samples_per_s", "measured_wall_s")
    return {k: result.get(k) for k in keys}


def _later_epochs_rate(run_dir: Path, batch: int) -> float:
    """Training samples/s of the epochs after the first: train events' steps over their time."""
    train = [e for e in _events(run_dir) if e["event"] == "train"]
    epoch1 = [e for e in train if e["epoch"] >= 1]
    first, last = epoch1[0], epoch1[-1]
    return round((last["step"] - first["step"]) * batch / (last["time"] - first["time"]), 1)


def decoded(shards: Path, out: Path, epochs: int) -> Dict:
    from spt_dist.config import load_config
    from spt_dist.data import ShardIndex, TrainData

    base = ["model.name=vit_tiny_p7_28", f"model.checkpoint={DEMO_WEIGHTS}", "method.name=vpt",
            "method.prompt_length=8", "method.deep=true", "method.track_alignment=false",
            f"data.root={shards}", "data.preset=fgvc", "data.train_split=train", "data.val_split=val",
            "data.test_split=null", "run.eval_every=1000", "data.batch_size=32", "data.mixing_check=ignore", f"optim.epochs={epochs}",
            "optim.warmup_epochs=0", "optim.lr=0.01", "run.loggers=[]", "run.log_every=1",
            "run.checkpoint_every=100000"]
    report: Dict = {}
    for workers in (0, 2):
        for cache_mb in (0, 2048):
            name = f"w{workers}_cache{cache_mb}"
            res = _train([*base, f"data.num_workers={workers}", f"data.cache_mb={cache_mb}"], name, out)
            report[name] = {"samples_per_s_overall": res["samples_per_s"],
                            "samples_per_s_after_first_epoch": _later_epochs_rate(out / name, 32),
                            "wall_s": res["wall_s"]}
    for workers in (0, 2):
        rate = {}
        for cache_mb in (0, 2048):
            cfg = load_config(None, [*base, f"data.num_workers={workers}", f"data.cache_mb={cache_mb}"]).data
            data = TrainData(cfg, ShardIndex.load(shards), 28, (0.5,) * 3, (0.5,) * 3, 0, 1, seed=0)
            list(data.epoch(0))
            t, n = time.perf_counter(), 0
            for e in (1, 2):
                n += sum(b[0].shape[0] for b in data.epoch(e))
            rate[cache_mb] = round(n / (time.perf_counter() - t), 1)
            if data.cache is not None:
                report[f"reader_w{workers}_cache_mib"] = round(data.cache.nbytes / 2 ** 20, 2)
        report[f"reader_w{workers}_samples_per_s"] = {"cache_0": rate[0], "cache_2048": rate[2048],
                                                      "ratio": round(rate[2048] / rate[0], 1)}
    for workers in (0, 2):
        a, b = report[f"w{workers}_cache0"], report[f"w{workers}_cache2048"]
        report[f"end_to_end_ratio_w{workers}"] = round(b["samples_per_s_after_first_epoch"]
                                                       / a["samples_per_s_after_first_epoch"], 2)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="features,decoded")
    ap.add_argument("--epochs", type=int, default=100, help="linear probe epochs")
    ap.add_argument("--plain-epochs", type=int, default=3, help="ViT-S/16 plain linear probe: epochs measured")
    ap.add_argument("--decoded-epochs", type=int, default=4)
    ap.add_argument("--skip-vit-s", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    # Imports first: the first train() in a process would otherwise pay timm's and DeepSpeed's
    # imports (several seconds) inside its measured wall time, and only that run.
    import importlib

    from spt_dist.distributed import import_deepspeed

    for module in ("spt_dist.model.build", "spt_dist.engine.assemble"):
        importlib.import_module(module)

    import_deepspeed()
    work = Path(tempfile.mkdtemp(prefix="bench_caches_"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Sections not measured this time keep their figures from the file already there.
    result = json.loads(out.read_text()) if out.is_file() else {}
    result["machine"] = f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}"

    def save(key: str, value: Dict) -> None:  # after each section: a timeout keeps what is done
        value["measured"] = {"date": time.strftime("%Y-%m-%d"), "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}
        result[key] = value
        out.write_text(json.dumps(result, indent=1) + "\n")

    try:
        if "features" in args.sections:
            demo = ["model.name=vit_tiny_p7_28", f"model.checkpoint={DEMO_WEIGHTS}", "data.preset=small"]
            save("feature_cache_demo_backbone", linear_probe(fmnist_split(work), demo, work / "runs", "demo",
                                                             args.epochs))
            if not args.skip_vit_s:
                vits = ["model.name=vit_s16", "data.preset=vtab"]
                save("feature_cache_vit_s16", linear_probe(jpeg_split(work, "vtab", 256, 1000, 200), vits,
                                                           work / "runs", "vit_s16", args.epochs, args.plain_epochs))
        if "decoded" in args.sections:
            save("decoded_cache", decoded(jpeg_split(work, "fgvc", 448, 1000, 64), work / "runs", args.decoded_epochs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
