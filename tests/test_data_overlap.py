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


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """A dataset with a genuine duplicate: test image 5 renders the same pixels as training image 0
    (as dSprites' square rotated by 90 degrees does), under its own file and key."""
    src = tmp_path_factory.mktemp("twins")
    rng = np.random.default_rng(1)
    pixels = [rng.integers(0, 255, (12, 12, 3), dtype=np.uint8) for _ in range(6)]
    pixels[5] = pixels[0].copy()
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(src / f"{i}.png")
    for name, ids in {"train": range(3), "val": [3], "test": [4, 5]}.items():
        (src / f"{name}.txt").write_text("".join(f"{i}.png {i % 2}\n" for i in ids))
    out = src / "shards"
    assert spt(["shards", "build", "vtab", str(src), "--out", str(out), "--no-progress"]) == 0
    return ShardIndex.load(out)


def test_genuine_duplicates_need_an_allowance_and_are_counted(twins):
    with pytest.raises(DataError, match=r"test split 'test' shares 1 of its 2 images with the training split "
                                        r"'train' \(3 images\).*data.duplicate_images=1 allows them \(now 0\)"):
        check_eval_splits(twins, "train", "val", "test")
    with pytest.warns(UserWarning, match=r"test split 'test' shares 1 of its 2 images.*under other keys, "
                                         r"allowed by data.duplicate_images=1"):
        check_eval_splits(twins, "train", "val", "test", allowed=1)


def test_an_allowance_does_not_let_a_split_leak(vtab):
    # val200 inside train800val200 is 2 shared images here: an allowance of 1 still refuses it.
    with pytest.raises(DataError, match=r"shares 2 of its 2 images.*data.duplicate_images=2 allows them \(now 1\)"):
        check_eval_splits(vtab, "train800val200", "val200", None, allowed=1)


def test_the_same_sample_in_both_splits_is_refused_whatever_the_allowance(vtab):
    # Evaluating on the training split itself: the same keys, the same images.
    with pytest.raises(DataError, match=r"8 of them are the same samples \(same key, e.g. 'train800-0000000'\), "
                                        r"which no setting allows"):
        check_eval_splits(vtab, "train800", "train800", None, allowed=10_000)


def test_the_allowance_is_a_validated_setting(capsys):
    from spt_dist.config import ConfigError, load_config

    assert load_config(None).data.duplicate_images == 0
    assert load_config(None, ["data.duplicate_images=3"]).data.duplicate_images == 3
    with pytest.raises(ConfigError, match="data.duplicate_images"):
        load_config(None, ["data.duplicate_images=-1"])


def test_a_run_trains_with_allowed_duplicates(twins, tmp_path, capsys):
    args = ["train", "configs/base.yaml", "model.name=vit_micro_p4_16", "method.name=linear",
            "method.prompt_length=0", "method.init=vpt", f"data.root={twins.root}", "data.train_split=train",
            "data.val_split=val", "data.test_split=test", "data.batch_size=1", "optim.epochs=1",
            "optim.warmup_epochs=0", "run.loggers=[]", f"run.out_dir={tmp_path}", "run.progress=false"]
    assert spt(args + ["run.name=refused"]) == 2
    assert "data.duplicate_images=1 allows them (now 0)" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="allowed by data.duplicate_images=1"):
        assert spt(args + ["run.name=allowed", "data.duplicate_images=1"]) == 0
    assert (tmp_path / "allowed" / "results.json").is_file()


def test_the_login_node_check_reads_the_allowance(twins):
    from spt_dist.config import load_config
    from spt_dist.study.submit import preflight_on_login_node

    base = ["model.name=vit_micro_p4_16", "method.name=linear", "method.prompt_length=0", "method.init=vpt",
            f"data.root={twins.root}", "data.train_split=train", "data.val_split=val", "data.test_split=test",
            "data.batch_size=1", "optim.epochs=1", "optim.warmup_epochs=0"]
    with pytest.raises(DataError, match=r"data.duplicate_images=1 allows them \(now 0\)"):
        preflight_on_login_node(load_config(None, base))
    with pytest.warns(UserWarning, match="allowed by data.duplicate_images=1"):
        preflight_on_login_node(load_config(None, base + ["data.duplicate_images=1"]))
