"""Shared pieces of the serving tests: prompt packs written by the real pack writer, on the
tiny vit_micro_p4_16 backbone of engine_helpers.make_assets, and small PNG images."""
from __future__ import annotations

import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from engine_helpers import make_assets, write_config

# name -> (prompt_length, deep, pool, classes): every pool, shallow and deep, a linear probe,
# five prompt lengths (two packs share one) and four class counts.
PACKS = {
    "linear": (0, False, "token", 2),
    "shallow3": (3, False, "token", 4),
    "deep5": (5, True, "mean", 3),
    "deep8": (8, True, "mean_with_prompts", 5),
    "shallow2": (2, False, "mean_with_prompts", 3),
    "deep3": (3, True, "token", 4),  # shares a pass with shallow3: deep and shallow rows in one group
}


@lru_cache(maxsize=None)
def _hash(backbone: str) -> str:
    from spt_dist.model import build_backbone, weights_hash

    return weights_hash(build_backbone("vit_micro_p4_16", checkpoint=backbone))


def write_pack(path: Path, assets: Dict[str, Path], prompt_length: int, deep: bool, pool: str, num_classes: int,
               seed: int, method: str = "vpt", meta: Optional[Dict[str, str]] = None,
               classes: Optional[List[str]] = None) -> Path:
    """A prompt pack with random prompts and head, its metadata from pack_metadata of a real config
    (`meta`: fields written over it, to make packs that do not fit)."""
    from spt_dist.config import load_config
    from spt_dist.engine.export import export_prompt_pack, pack_metadata
    from spt_dist.model import input_spec

    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = load_config(str(write_config(path.parent / f"{path.stem}.yaml", assets, path.parent / "runs")))
    classes = classes or [f"class_{seed}_{i}" for i in range(num_classes)]
    written = pack_metadata(cfg, _hash(str(assets["backbone"])), pool, classes, input_spec(cfg), torch.float32)
    written.update(method=method, prompt_length=str(prompt_length), deep=json.dumps(deep))
    written.update(meta or {})
    g = torch.Generator().manual_seed(seed)
    tensors = {"head.weight": torch.randn(num_classes, 32, generator=g),
               "head.bias": torch.randn(num_classes, generator=g)}
    if prompt_length:
        tensors["prompts"] = torch.randn(3 if deep else 1, prompt_length, 32, generator=g)
    return export_prompt_pack(path, tensors, written)


def write_packs(folder: Path, assets: Dict[str, Path], names: Optional[list] = None) -> Dict[str, str]:
    return {name: str(write_pack(folder / f"{name}.safetensors", assets, *PACKS[name], seed=i))
            for i, name in enumerate(names or PACKS)}


def png(seed: int, size: int = 16) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["PACKS", "make_assets", "png", "write_pack", "write_packs"]
