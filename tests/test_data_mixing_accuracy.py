"""Accuracy on a class-ordered source equals a uniformly shuffled plain PyTorch loop's.

Fashion-MNIST classes 5-9 (which the demo backbone never saw) are written as an image-folder
tree, class by class, and sharded in that order (class-pure shards, as foreign tools leave
them). The engine's linear probe on them must land within 2 points of a plain loop that
decodes the same PNG files with torchvision and draws a torch.randperm every epoch.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from spt_dist.data.sources.builtin import FMNIST_DIR, read_idx

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ROOT / "spt_dist" / "assets" / "vit_tiny_p7_28_fmnist04.safetensors"
PER_CLASS = {"train": 300, "test": 100}
EPOCHS, BATCH, LR = 4, 32, 0.01

pytestmark = pytest.mark.skipif(not Path(FMNIST_DIR).is_dir(), reason="Debian dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def ordered(tmp_path_factory):
    """root/{train,test}/<class>/<n>.png, classes 5..9 relabelled 0..4, then class-pure shards."""
    from spt_dist.data import write_shards
    from spt_dist.data.sources import folder_source

    root = tmp_path_factory.mktemp("fm_ordered")
    files = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
    for split, (img_file, lab_file) in files.items():
        images, labels = read_idx(Path(FMNIST_DIR) / img_file), read_idx(Path(FMNIST_DIR) / lab_file)
        for c in range(5, 10):
            for n in np.flatnonzero(labels == c)[:PER_CLASS[split]]:
                path = root / "tree" / split / f"c{c}" / f"{n:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[n]).save(path)
    write_shards(folder_source(str(root / "tree")), str(root / "shards"), shard_size=100, progress=False,
                 shuffle=False)
    return root


def _engine_top1(shards: Path, out: Path) -> float:
    from spt_dist.config import load_config
    from spt_dist.engine.train import train

    cfg = load_config(None, [
        "model.name=vit_tiny_p7_28", f"model.checkpoint={BACKBONE}", "method.name=linear",
        "method.prompt_length=0", "method.init=vpt", f"data.root={shards}", "data.val_split=null",
        f"data.batch_size={BATCH}", "optim.name=adamw", f"optim.lr={LR}", f"optim.epochs={EPOCHS}",
        "optim.warmup_epochs=0", "run.progress=false", f"run.out_dir={out}", "run.name=probe"])
    return train(cfg)["top1"]


def _plain_top1(tree: Path) -> float:
    """An independent loop: torchvision decoding, a fresh permutation every epoch, the same
    model, optimizer and per-step cosine schedule."""
    from torchvision import datasets, transforms

    from spt_dist.model import PromptedViT, build_backbone, normalization

    mean, std = normalization("vit_tiny_p7_28")
    tf = transforms.Compose([transforms.Grayscale(3), transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_set, test_set = datasets.ImageFolder(str(tree / "train"), tf), datasets.ImageFolder(str(tree / "test"), tf)
    torch.manual_seed(0)
    model = PromptedViT(build_backbone("vit_tiny_p7_28", checkpoint=BACKBONE), num_classes=5)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=LR, weight_decay=0.0)
    steps = EPOCHS * (len(train_set) // BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    xs = torch.stack([x for x, _ in train_set])
    ys = torch.tensor([y for _, y in train_set])
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(ys))
        for i in range(0, len(perm) - BATCH + 1, BATCH):
            idx = perm[i:i + BATCH]
            loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        xt = torch.stack([x for x, _ in test_set])
        yt = torch.tensor([y for _, y in test_set])
        return 100.0 * float((model(xt).argmax(1) == yt).float().mean())


def test_class_ordered_folder_trains_like_a_shuffled_loop(ordered, tmp_path):
    from spt_dist.data import ShardIndex

    index = ShardIndex.load(ordered / "shards")
    assert max(len(s.class_counts()) for s in index.split("train").shards) == 1  # class-pure shards
    engine, plain = _engine_top1(ordered / "shards", tmp_path), _plain_top1(ordered / "tree")
    print(f"class-ordered shards, engine linear probe {engine:.2f} % vs plain shuffled loop {plain:.2f} %")
    assert plain > 60.0  # the probe learns (chance: 20 %)
    assert abs(engine - plain) <= 2.0
