"""Decode-and-transform throughput, one process, one core, num_workers=0: the shard reader
(TrainData, preset vtab) versus torchvision ImageFolder + DataLoader on the same JPEGs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py [--images 1000]

Images: random crops of scikit-learn's two sample photographs, saved as JPEG (quality 90)
at 224 px (decode + no-op resize) and at 448 px (decode + resize to 224, as for larger
photos). Each reader runs `--repeats` times, alternating; the best run counts (the machine
is shared). Writes benchmarks/results/data.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BATCH = 64


def make_jpegs(root: Path, n: int, size: int, seed: int = 0) -> None:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(200, min(photo.size)))
        x, y = int(rng.integers(0, photo.size[0] - side)), int(rng.integers(0, photo.size[1] - side))
        crop = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BICUBIC)
        path = root / f"class{i % 10}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        crop.save(path, format="JPEG", quality=90)


def shard_reader(shards: Path) -> float:
    from spt_dist.config.schema import DataConfig
    from spt_dist.data import ShardIndex, TrainData

    cfg = DataConfig(train_split="train", batch_size=BATCH, num_workers=0, shuffle_buffer=1000, preset="vtab")
    data = TrainData(cfg, ShardIndex.load(shards), 224, MEAN, STD, 0, 1, seed=0)
    start, n = time.perf_counter(), 0
    for images, _, _ in data.epoch(0):
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def folder_reader(folder: Path) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((224, 224), transforms.InterpolationMode.BICUBIC),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), tf), batch_size=BATCH,
                                         shuffle=True, num_workers=0, drop_last=True)
    start, n = time.perf_counter(), 0
    for images, _ in loader:
        n += images.shape[0]
    return n / (time.perf_counter() - start)


def run_case(tmp: Path, n: int, size: int, repeats: int) -> dict:
    from spt_dist.data import write_shards
    from spt_dist.data.sources import folder_source

    folder = tmp / f"jpeg{size}"
    make_jpegs(folder, n, size)
    shards = tmp / f"shards{size}"
    write_shards(folder_source(str(folder), val_fraction=0.0, test_fraction=0.0), str(shards),
                 shard_size=256, workers=1, progress=False)
    best = {"shards": 0.0, "imagefolder": 0.0}
    for _ in range(repeats):
        best["imagefolder"] = max(best["imagefolder"], folder_reader(folder))
        best["shards"] = max(best["shards"], shard_reader(shards))
    return {"source_px": size, "images": n, "shards_img_s": round(best["shards"], 1),
            "imagefolder_img_s": round(best["imagefolder"], 1),
            "ratio": round(best["shards"] / best["imagefolder"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (224, 448):
            r = run_case(Path(tmp), args.images, size, args.repeats)
            print(f"JPEG {size}px -> 224: shard reader {r['shards_img_s']} img/s, "
                  f"ImageFolder {r['imagefolder_img_s']} img/s, ratio {r['ratio']}")
            results.append(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "decode+transform, 1 process, num_workers=0, 1 thread",
                               "batch_size": BATCH, "torch": torch.__version__, "machine": platform.machine(),
                               "cases": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
