"""The prompt pack: a run's trainable tensors plus what is needed to apply them to the backbone.

`prompt_pack.safetensors` holds `prompts` (depth|1, p, d) when the method has prompts, the
head (`head.weight`, `head.bias`) and, for method=full, the tuned backbone. Metadata names
the backbone and the sha256 of its weights: `spt predict` refuses any other backbone file.
Tensors are the fp32 master values; `dtype` names the precision the run evaluated in
(fp32 | bf16 | fp16), and `spt predict` casts model and inputs to it, as the run did, so it
reproduces the run's test top-1. Packs without `dtype` run in fp32.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Tuple

import torch

from spt_dist.config import Config
from spt_dist.errors import SptError

from .ds_engine import dtype_name

if TYPE_CHECKING:
    from spt_dist.model import InputSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PackMismatchError(SptError, ValueError):
    """A backbone file whose weights are not the ones the pack was trained on."""


def pack_metadata(cfg: Config, weights_hash: str, pool: str, classes: List[str], inputs: "InputSpec",
                  dtype: torch.dtype) -> Dict[str, str]:
    """What `spt predict` needs to rebuild and check the model (safetensors metadata: strings)."""
    return {
        "backbone": cfg.model.name, "weights_hash": weights_hash, "method": cfg.method.name, "pool": pool,
        "prompt_length": str(cfg.method.prompt_length), "deep": json.dumps(cfg.method.deep),
        "classes": json.dumps(list(classes)), "img_size": str(inputs.img_size),
        "in_chans": str(cfg.model.in_chans or 0), "mean": json.dumps(list(inputs.mean)),
        "std": json.dumps(list(inputs.std)), "preset": cfg.data.preset, "dtype": dtype_name(dtype),
    }


def export_prompt_pack(path: Path, trainable: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> Path:
    from safetensors.torch import save_file

    from spt_dist.io import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in trainable.items()}, str(tmp), metadata=metadata)
    return path


def read_prompt_pack(pack: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(tensors, metadata with typed values) of a pack file; PackMismatchError if it is none."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(pack, framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise PackMismatchError(f"{pack} is not a prompt pack: {exc}") from None
    if "weights_hash" not in raw:
        raise PackMismatchError(f"{pack} is not a prompt pack (no backbone metadata)")
    try:
        meta = dict(raw, prompt_length=int(raw["prompt_length"]), deep=json.loads(raw["deep"]),
                    classes=json.loads(raw["classes"]), img_size=int(raw["img_size"]),
                    mean=json.loads(raw["mean"]), std=json.loads(raw["std"]), dtype=raw.get("dtype", "fp32"))
    except (KeyError, ValueError) as exc:
        raise PackMismatchError(f"{pack}: unreadable metadata ({exc!r})") from None
    if meta["dtype"] not in DTYPES:
        raise PackMismatchError(f"{pack}: unknown dtype {meta['dtype']!r} in its metadata")
    return tensors, meta


def load_prompt_pack(pack: str, backbone_checkpoint: str) -> Tuple[Any, Dict[str, Any]]:
    """(PromptedViT in eval mode, metadata); raises PackMismatchError on a different backbone."""
    from spt_dist.model import PromptedViT, build_backbone, weights_hash

    tensors, meta = read_prompt_pack(pack)
    backbone = build_backbone(meta["backbone"], img_size=meta["img_size"],
                              in_chans=int(meta.get("in_chans", "0")) or None, checkpoint=backbone_checkpoint)
    have = weights_hash(backbone)
    if have != meta["weights_hash"]:
        raise PackMismatchError(f"{backbone_checkpoint} is not the backbone {pack} was trained on: weights "
                                f"sha256 {have[:16]}... != {meta['weights_hash'][:16]}... (backbone "
                                f"'{meta['backbone']}')")
    model = PromptedViT(backbone, num_classes=len(meta["classes"]), prompt_length=meta["prompt_length"],
                        deep=meta["deep"], pool=meta["pool"], train_backbone=meta["method"] == "full")
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    wanted = {n for n, _ in model.named_trainable_parameters()}
    if unexpected or wanted & set(missing):
        raise PackMismatchError(f"{pack}: tensors do not fit the model: missing {sorted(wanted & set(missing))}, "
                                f"unexpected {sorted(unexpected)}")
    # The frozen backbone and the tuned tensors in the run's precision (the fp32 masters round
    # to exactly the weights the run evaluated with).
    return model.to(DTYPES[meta["dtype"]]).eval(), meta
