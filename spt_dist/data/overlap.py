"""Evaluation splits must not hold training images.

Images are compared by content (the index's sha256 digests), not by key or file name: a
VTAB-1k `val200` listed again inside `train800val200` has other keys but the same images
(`spt shards build` keys every sample by its split and position). Two kinds of shared image:
- the same key with the same content in both splits: the same sample, always an error;
- the same content under another key: a copy of a training image, or a genuine duplicate of
  the dataset (two samples that render the same pixels). The index cannot tell them apart, so
  they are refused unless `data.duplicate_images` allows that many (per evaluation split),
  which then trains with a warning giving the count.
Torch-free, so a login node refuses such a config before anything is submitted.
"""
from __future__ import annotations

import warnings
from typing import Optional

from .index import DataError, ShardIndex


def check_disjoint(index: ShardIndex, train_split: str, eval_split: Optional[str], role: str,
                   allowed: int = 0) -> None:
    """DataError when `eval_split` (used as `role`: "validation" or "test") shares images with
    `train_split`: any sample present in both under the same key, or more than `allowed` images
    under other keys; a warning when it shares 1..`allowed` of them."""
    if not eval_split:
        return
    train = index.split(train_split).digests()
    contents = set(train.values())
    evaluated = index.split(eval_split).digests()
    same = sorted(k for k, d in evaluated.items() if train.get(k) == d)
    shared = sum(1 for d in evaluated.values() if d in contents)
    if not shared:
        return
    key = "data.val_split" if role == "validation" else "data.test_split"
    what = (f"{index.root}: {role} split '{eval_split}' shares {shared} of its {len(evaluated)} images with the "
            f"training split '{train_split}' ({index.split(train_split).num_samples} images)")
    if same or shared > allowed:
        if same:
            why = (f"{len(same)} of them are the same samples (same key, e.g. '{same[0]}'), which no setting "
                   f"allows")
        else:
            why = (f"if they are genuine duplicates of the dataset (different samples, the same bytes), "
                   f"data.duplicate_images={shared} allows them (now {allowed})")
        raise DataError(
            f"{what}: {role} accuracy on it would partly be training accuracy; {why}. Choose a {key} disjoint "
            f"from data.train_split (a protocol's tuning stage trains on train800 / train and validates on "
            f"val200 / val: data.stage=tune)")
    warnings.warn(f"{what} under other keys, allowed by data.duplicate_images={allowed}: {role} accuracy "
                  f"counts them")


def check_eval_splits(index: ShardIndex, train_split: str, val_split: Optional[str],
                      test_split: Optional[str], allowed: int = 0) -> None:
    """Both evaluation splits against the training split; `allowed`: data.duplicate_images."""
    check_disjoint(index, train_split, val_split, "validation", allowed)
    check_disjoint(index, train_split, test_split, "test", allowed)
