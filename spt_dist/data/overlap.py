"""Evaluation splits must not hold training images.

Images are compared by content (the index's sha256 digests), not by key or file name: a
VTAB-1k `val200` listed again inside `train800val200` has other keys but the same images.
Torch-free, so a login node refuses such a config before anything is submitted.
"""
from __future__ import annotations

from typing import Optional

from .index import DataError, ShardIndex


def check_disjoint(index: ShardIndex, train_split: str, eval_split: Optional[str], role: str) -> None:
    """DataError when `eval_split` (used as `role`: "validation" or "test") shares images with
    `train_split`, with the counts."""
    if not eval_split:
        return
    train = set(index.split(train_split).digests().values())
    evaluated = index.split(eval_split).digests()
    shared = sum(1 for d in evaluated.values() if d in train)
    if shared:
        key = "data.val_split" if role == "validation" else "data.test_split"
        raise DataError(
            f"{index.root}: {role} split '{eval_split}' shares {shared} of its {len(evaluated)} images with the "
            f"training split '{train_split}' ({index.split(train_split).num_samples} images): {role} accuracy "
            f"on it would partly be training accuracy. Choose a {key} disjoint from data.train_split "
            f"(a protocol's tuning stage trains on train800 / train and validates on val200 / val: data.stage=tune)")


def check_eval_splits(index: ShardIndex, train_split: str, val_split: Optional[str],
                      test_split: Optional[str]) -> None:
    check_disjoint(index, train_split, val_split, "validation")
    check_disjoint(index, train_split, test_split, "test")
