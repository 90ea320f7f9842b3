"""A validation or test split that shares images with training is refused, with the counts,
before anything trains. VTAB-1k's layout is the case in point: val200 lies inside train800val200."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from spt_dist.cli import main as spt
from spt_dist.data import DataError, ShardIndex
from spt_dist.data.overlap import check_eval_splits


@pytest.fixture(scope="module")
def vtab(tmp_path_factory):
    src = tmp_path_factory.mktemp("vtab")
    rng = np.random.default_rng(0)
    for i in range(13):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(src / f"{i}.png")
    lists = {"train800": range(8), "val200": range(8, 10), "train800val200": range(10), "test": range(10, 13)}
    for name, ids in lists.items():
        (src / f"{name}.txt").write_text("".join(f"{i}.png {i % 2}\n" for i in ids))
    out = src / "shards"
    assert spt(["shards", "build", "vtab", str(src), "--out", str(out), "--no-progress"]) == 0
    return ShardIndex.load(out)


def test_validation_inside_training_is_refused_with_counts(vtab):
    with pytest.raises(DataError, match=r"validation split 'val200' shares 2 of its 2 images with the training "
                                        r"split 'train800val200' \(10 images\)"):
        check_eval_splits(vtab, "train800val200", "val200", "test")
    check_eval_splits(vtab, "train800", "val200", None)   # the tuning stage
    check_eval_splits(vtab, "train800val200", None, "test")  # the final stage
    with pytest.raises(DataError, match=r"test split 'train800' shares 8 of its 8 images"):
        check_eval_splits(vtab, "train800val200", None, "train800")


def test_a_run_validating_inside_its_training_split_stops_before_training(vtab, tmp_path, capsys):
    args = ["train", "configs/base.yaml", "model.name=vit_micro_p4_16", "method.name=linear",
            "method.prompt_length=0", "method.init=vpt", f"data.root={vtab.root}", "data.train_split=train800val200",
            "data.val_split=val200", "data.batch_size=2", "optim.epochs=1", "optim.warmup_epochs=0",
            f"run.out_dir={tmp_path}", "run.name=leak", "run.progress=false"]
    assert spt(args) == 2
    assert "validation split 'val200' shares 2 of its 2 images" in capsys.readouterr().err
    assert not (tmp_path / "leak" / "checkpoints").exists()
