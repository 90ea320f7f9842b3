"""Data stage: shard writers, index, distributed readers, fractions, transforms."""
from .fraction import read_selected_keys, select_count, select_fraction, write_selected_keys
from .index import DataError, ShardIndex
from .loader import EvalData, TrainData
from .reader import BadSampleError
from .transforms import build_transform
from .writer import write_shards

__all__ = ["BadSampleError", "DataError", "EvalData", "ShardIndex", "TrainData", "build_transform",
           "read_selected_keys", "select_count", "select_fraction", "write_selected_keys", "write_shards"]
