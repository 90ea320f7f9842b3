"""`data.stage`: a protocol's tuning and final stages as one key.

With `data.stage=tune` or `final` the split names the data stage reads (`data.train_split`,
`val_split`, `test_split`) are taken from that stage's table (`data.tune`, `data.final`).
Invariant after composition: they equal the table's names. A file or override that sets a
split key to another name is an error naming both keys, never silently replaced.
"""
from __future__ import annotations

from typing import Dict, Mapping

from omegaconf import DictConfig

from .errors import ConfigError

SPLIT_KEYS = {"train_split": "train", "val_split": "val", "test_split": "test"}
STAGED = ("tune", "final")


def note_split_keys(source: Mapping, origin: str, origins: Dict[str, str]) -> None:
    """Record which split keys `source` (a file or an override, DictConfig or plain) sets explicitly."""
    data = source.get("data") if isinstance(source, (DictConfig, Mapping)) else None
    if isinstance(data, (DictConfig, Mapping)):
        for key in SPLIT_KEYS:
            if key in data:
                origins[key] = origin


def resolve_stage(tree: DictConfig, origins: Dict[str, str]) -> None:
    """Write the stage's split names into data.*_split (custom: nothing to do)."""
    stage = tree.data.stage
    if stage not in STAGED:
        return  # custom, or a bad value that validation names
    table = tree.data[stage]
    for key, name in SPLIT_KEYS.items():
        wanted = table[name]
        if key in origins and tree.data[key] != wanted:
            raise ConfigError(
                f"{origins[key]}: config key 'data.{key}' = {tree.data[key]!r} contradicts data.stage={stage}, "
                f"which reads its splits from data.{stage} (data.{stage}.{name} = {wanted!r}); "
                f"set data.{stage}.{name} instead, or data.stage=custom")
        tree.data[key] = wanted
