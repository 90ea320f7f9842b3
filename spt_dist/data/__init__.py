"""Data stage: shard writers, index, distributed readers, fractions, transforms.

Names are imported on first use, so that the `spt` command (and a login node validating a
config) does not import torch.
"""
from importlib import import_module
from typing import Any

_EXPORTS = {
    "read_selected_keys": "fraction", "select_count": "fraction", "select_fraction": "fraction",
    "write_selected_keys": "fraction",
    "DataError": "index", "ShardIndex": "index",
    "EvalData": "loader", "TrainData": "loader", "DrawnData": "loader",
    "BadSampleError": "reader",
    "build_transform": "transforms",
    "write_shards": "writer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'spt_dist.data' has no attribute '{name}'")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
