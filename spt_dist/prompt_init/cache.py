"""Prototype cache: one safetensors file per (strategy, everything the prototypes depend on).

The key covers the backbone weights, the data (index content hash and the exact selected
keys), the preprocessing, the layers, p, the seed, the candidate budget and the k-means
settings; not the world size or batch size, which do not change the result. Files are
written through spt_dist.io.atomic_path, so a reader never sees half a file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from safetensors import safe_open
from safetensors.torch import save_file

from spt_dist.io import atomic_path

from .prototypes import Prototypes

CACHE_FORMAT = 3  # 2: transform presets follow the official pipelines; draws and window layout;
#                  3: vtab resizes as TensorFlow 1; method.init_transform


def keys_digest(keys: Sequence[str]) -> str:
    """Order-free digest of the selected sample keys."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()


def cache_key(fields: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True).encode()).hexdigest()


def cache_path(cache_dir: str, strategy: str, fields: Dict[str, Any]) -> Path:
    return Path(os.path.expanduser(cache_dir)) / f"{strategy}-{cache_key(fields)[:32]}.safetensors"


def load_prototypes(path: Path, fields: Dict[str, Any]) -> Optional[Prototypes]:
    """The cached prototypes, or None when absent, unreadable or made under another key."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") != cache_key(fields):
                return None
            return Prototypes(f.get_tensor("prototypes"), json.loads(meta["stats"]))
    except Exception:  # a truncated or foreign file is a miss, never a wrong answer
        return None


def save_prototypes(path: Path, protos: Prototypes, fields: Dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"key": cache_key(fields), "fields": json.dumps(fields, sort_keys=True),
            "stats": json.dumps(protos.stats)}
    with atomic_path(path) as tmp:
        save_file({"prototypes": protos.tensor.detach().cpu().contiguous()}, str(tmp), metadata=meta)
    return path
