"""Reader throughput per core, one process, one thread, num_workers=0, in ONE run:

- exact shuffle (TrainData, data.shuffle=exact: random access by the index's offsets),
- stream (TrainData, data.shuffle=stream: sequential tar reads + buffer),
- wids (the webdataset project's indexed tar reader, ShardListDataset, same decode and
  transform, a random permutation of the split),
- torchvision ImageFolder + DataLoader(shuffle=True) on the same JPEG files,

and, without decoding, the access alone: fetching every sample's bytes in a random order
through the index's offset table versus through wids (its start-up, which indexes every
shard, counted separately).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py [--images 1000] [--repeats 3]

Images: random crops of scikit-learn's two sample photographs, saved as JPEG (quality 90)
at 224 px (decode + no-op resize) and at 448 px (decode + resize to 224), 10 class folders,
shards of 256. Readers alternate; the best of `--repeats` counts (the machine is shared).
Writes benchmarks/results/data.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
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


def _timed(batches) -> float:
    start, n = time.perf_counter(), 0
    for b in batches:
        n += b[0].shape[0]
    return n / (time.perf_counter() - start)


def shard_reader(shards: Path, shuffle: str) -> float:
    from spt_dist.config.schema import DataConfig
    from spt_dist.data import ShardIndex, TrainData

    cfg = DataConfig(train_split="train", batch_size=BATCH, num_workers=0, shuffle_buffer=1000, preset="vtab",
                     shuffle=shuffle)
    data = TrainData(cfg, ShardIndex.load(shards), 224, MEAN, STD, 0, 1, seed=0)
    return _timed(data.epoch(0))


def _wids_dataset(shards: Path):
    import wids

    from spt_dist.data import ShardIndex

    index = ShardIndex.load(shards)
    spec = [{"url": str(index.shard_path(s)), "nsamples": s.num_samples} for s in index.split("train").shards]
    # Local files read in place (no copy into a cache folder); every shard kept open.
    return wids.ShardListDataset(spec, localname=lambda url: url, lru_size=len(spec), transformations=[])


def wids_reader(shards: Path) -> float:
    from spt_dist.data import build_transform

    tf = build_transform("vtab", 224, MEAN, STD, train=True)
    start = time.perf_counter()
    ds = _wids_dataset(shards)
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    n = 0
    for i in range(0, len(order) - BATCH + 1, BATCH):
        pixels, labels = [], []
        for j in order[i:i + BATCH]:
            sample = ds[j]
            pixels.append(tf.pixels(sample[".jpg"].getvalue()))
            labels.append(int(sample[".cls"].getvalue()))
        tf.normalize(torch.from_numpy(np.stack(pixels)))
        torch.tensor(labels)
        n += BATCH
    return n / (time.perf_counter() - start)


def folder_reader(folder: Path) -> float:
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((224, 224), transforms.InterpolationMode.BICUBIC),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), tf), batch_size=BATCH,
                                         shuffle=True, num_workers=0, drop_last=True)
    return _timed(loader)


def access_only(shards: Path) -> dict:
    """Raw bytes of every sample in a random order: offsets in the index vs wids."""
    from spt_dist.data import ShardIndex
    from spt_dist.data.reader import SampleReader

    index = ShardIndex.load(shards)
    locs = [(s, j) for s in index.split("train").shards for j in range(s.num_samples)]
    random.Random(1).shuffle(locs)
    t0 = time.perf_counter()
    reader = SampleReader(index)
    total = sum(len(reader.read(s, j).fields[s.exts[j]]) for s, j in locs)
    own = time.perf_counter() - t0
    reader.close()
    t0 = time.perf_counter()
    ds = _wids_dataset(shards)
    for s in range(len(index.split("train").shards)):
        ds.get_shard(sum(x.num_samples for x in index.split("train").shards[:s]))  # open + index every shard
    startup = time.perf_counter() - t0
    order = list(range(len(ds)))
    random.Random(1).shuffle(order)
    t0 = time.perf_counter()
    wtotal = sum(len(ds[i][".jpg"].getvalue()) for i in order)
    wids_s = time.perf_counter() - t0
    assert wtotal == total
    return {"samples": len(locs), "offsets_samples_s": round(len(locs) / own, 1),
            "wids_samples_s": round(len(locs) / wids_s, 1), "wids_startup_s": round(startup, 4),
            "offsets_vs_wids": round(wids_s / own, 3)}


def run_case(tmp: Path, n: int, size: int, repeats: int) -> dict:
    from spt_dist.data import write_shards
    from spt_dist.data.sources import folder_source

    folder = tmp / f"jpeg{size}"
    make_jpegs(folder, n, size)
    shards = tmp / f"shards{size}"
    write_shards(folder_source(str(folder), val_fraction=0.0, test_fraction=0.0), str(shards),
                 shard_size=256, workers=1, progress=False)
    readers = {"exact": lambda: shard_reader(shards, "exact"), "stream": lambda: shard_reader(shards, "stream"),
               "wids": lambda: wids_reader(shards), "imagefolder": lambda: folder_reader(folder)}
    best = {k: 0.0 for k in readers}
    for _ in range(repeats):
        for name, fn in readers.items():
            best[name] = max(best[name], fn())
    out = {"source_px": size, "images": n, **{f"{k}_img_s": round(v, 1) for k, v in best.items()}}
    out["exact_vs_imagefolder"] = round(best["exact"] / best["imagefolder"], 3)
    out["exact_vs_stream"] = round(best["exact"] / best["stream"], 3)
    out["exact_vs_wids"] = round(best["exact"] / best["wids"], 3)
    out["access_only"] = access_only(shards)
    return out


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
            print(f"JPEG {size}px -> 224, img/s: exact {r['exact_img_s']}, stream {r['stream_img_s']}, "
                  f"wids {r['wids_img_s']}, ImageFolder {r['imagefolder_img_s']} "
                  f"(exact/ImageFolder {r['exact_vs_imagefolder']}); access only: offsets "
                  f"{r['access_only']['offsets_samples_s']}/s vs wids {r['access_only']['wids_samples_s']}/s")
            results.append(r)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "reader throughput, 1 process, num_workers=0, 1 thread",
                               "batch_size": BATCH, "torch": torch.__version__, "machine": platform.machine(),
                               "cases": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
