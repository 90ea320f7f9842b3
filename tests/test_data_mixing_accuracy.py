"""Accuracy on a class-ordered source equals a uniformly shuffled plain PyTorch loop's.

Fashion-MNIST classes 5-9 (which the demo backbone never saw) are written as an image-folder
tree, class by class, and sharded in that order (class-pure shards, as foreign tools leave
them). The engine's linear probe on them must land within 2 points of a plain loop that
decodes the same PNG files with torchvision and draws a torch.randperm every epoch.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from plain_loop import plain_top1
from spt_dist.data.sources.builtin import FMNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
BACKBONE = ROOT / "spt_dist" / "assets" / "vit_tiny_p7_28_fmnist04.safetensors"
PER_CLASS = {"train": 300, "test": 100}
EPOCHS, BATCH, LR = 4, 32, 0.01

pytestmark = pytest.mark.skipif(not Path(FMNIST_DIR).is_dir(), reason="Debian dataset-fashion-mnist not installed")


@pytest.fixture(scope="module")
def ordered(tmp_path_factory):
    """root/tree/{train,test}/<class>/<key>.png, classes 5..9 (relabelled 0..4), then
    class-pure shards written in that order."""
    from spt_dist.data import write_shards
    from spt_dist.data.sources import fmnist_source, folder_source
    from spt_dist.data.synthetic import write_image_tree

    root = tmp_path_factory.mktemp("fm_ordered")
    write_image_tree(fmnist_source(classes=[5, 6, 7, 8, 9], val_fraction=0.0), root / "tree", PER_CLASS)
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


def test_class_ordered_folder_trains_like_a_shuffled_loop(ordered, tmp_path):
    from spt_dist.data import ShardIndex

    index = ShardIndex.load(ordered / "shards")
    assert max(len(s.class_counts()) for s in index.split("train").shards) == 1  # class-pure shards
    engine = _engine_top1(ordered / "shards", tmp_path)
    plain = plain_top1(ordered / "tree", BACKBONE, "linear", EPOCHS, BATCH, LR)
    print(f"class-ordered shards, engine linear probe {engine:.2f} % vs plain shuffled loop {plain:.2f} %")
    assert plain > 60.0  # the probe learns (chance: 20 %)
    assert abs(engine - plain) <= 2.0
