"""What a weight file holds, read from its keys and tensor shapes: key layout, architecture,
parameter count and kind of position embedding.

No tensor is read but the position embedding: .npz members by their .npy headers, safetensors
by its header, torch files memory-mapped. A 2.5 GB ViT-H file is summarised in well under a
second. The layout names are those of known.LAYOUTS.
"""
from __future__ import annotations

import math
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .sincos import pos_embed_kind
from .weights import _DROP_PREFIXES, _MAE_MARKS, _NPZ_PREFIXES, CheckpointError, FileKeys, _raw_state

Shapes = Dict[str, Tuple[int, ...]]


@dataclass
class Summary:
    path: str
    size: int  # bytes on disk
    container: str  # npz | safetensors | torch
    layout: str
    patch: Optional[int] = None
    width: Optional[int] = None
    depth: Optional[int] = None
    heads: Optional[int] = None  # only .npz files store it
    mlp: Optional[int] = None
    tokens: Optional[int] = None  # position embedding rows
    in_chans: Optional[int] = None
    class_token: bool = False
    head_classes: Optional[int] = None  # rows of a classifier head; None: no classifier
    pre_logits: bool = False
    pos_embed: str = "none"
    params: int = 0  # the backbone's (no head, decoder, momentum encoder or predictor)
    file_params: int = 0  # every tensor in the file

    @property
    def img_size(self) -> Optional[int]:
        """The square input the position rows fit (with or without a class row)."""
        for rows in ((self.tokens or 0) - int(self.class_token), self.tokens or 0):
            side = math.isqrt(rows)
            if rows and side * side == rows and self.patch:
                return side * self.patch
        return None


def _numel(shape: Tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


# -- from names and shapes (what every reader below collects) ---------------------------------------

def npz_summary(out: Summary, shapes: Shapes, read_pos: Callable[[str], np.ndarray]) -> Summary:
    """Fill `out` from an .npz file's member shapes; `read_pos(name)` reads one member."""
    prefix = next((p for p in _NPZ_PREFIXES if f"{p}embedding/kernel" in shapes), "")
    own = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    pos_key = next((k for k in ("Transformer/posembed_input/pos_embedding", "pos_embedding") if k in own), None)
    blocks = {int(m.group(1)) for k in own if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
    out.file_params = sum(_numel(s) for s in shapes.values())
    if "embedding/kernel" not in own or pos_key is None or not blocks:
        out.layout = "unknown"
        return out
    attn, mlp = (("MultiHeadDotProductAttention_1", "MlpBlock_3") if pos_key.startswith("Transformer/")
                 else ("MultiHeadDotProductAttention_0", "MlpBlock_0"))
    out.layout = "jax-vit" if attn.endswith("_1") else "big_vision"
    p, _, c, d = own["embedding/kernel"]
    b0 = "Transformer/encoderblock_0/"
    out.patch, out.in_chans, out.width, out.depth = p, c, d, len(blocks)
    out.heads = own.get(f"{b0}{attn}/query/kernel", (None, None))[1]
    out.mlp = own.get(f"{b0}{mlp}/Dense_0/kernel", (None, None))[1]
    out.tokens, out.class_token = own[pos_key][1], "cls" in own
    out.head_classes = own["head/kernel"][1] if "head/kernel" in own else None
    out.pre_logits = "pre_logits/kernel" in own
    out.params = sum(_numel(s) for k, s in own.items() if not k.startswith(("head/", "pre_logits/")))
    out.pos_embed = pos_embed_kind(read_pos(prefix + pos_key)[0], out.class_token)
    return out


def _torch_layout(wrapper: Optional[str], keys) -> Tuple[str, str]:
    """(layout, the prefix of the backbone's keys)."""
    if any(k.startswith("module.base_encoder.") for k in keys):
        return "mocov3-pretrain", "module.base_encoder."
    if any(k.startswith("module.") for k in keys):
        return ("mocov3-linear" if "module.head.weight" in keys else "wrapped"), "module."
    if wrapper == "model":
        if any(k.startswith(_MAE_MARKS) for k in keys):
            return "mae-with-decoder", ""
        if "fc_norm.weight" in keys:
            return "mae-finetune", ""
        return ("deit" if "head.weight" in keys else "mae-pretrain"), ""
    return ("wrapped" if wrapper else "timm"), ""


def state_summary(out: Summary, shapes: Shapes, wrapper: Optional[str],
                  read_pos: Callable[[str], np.ndarray]) -> Summary:
    """Fill `out` from a torch / safetensors state dict's shapes; `wrapper`: the dict it sat in."""
    out.file_params = sum(_numel(s) for s in shapes.values())
    out.layout, prefix = _torch_layout(wrapper, list(shapes))
    own = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
    blocks = {int(m.group(1)) for k in own if (m := re.match(r"blocks\.(\d+)\.", k))}
    if "patch_embed.proj.weight" not in own or "pos_embed" not in own or not blocks:
        out.layout = "unknown"
        return out
    d, c, p, _ = own["patch_embed.proj.weight"]
    out.patch, out.in_chans, out.width, out.depth = p, c, d, len(blocks)
    out.mlp = own.get("blocks.0.mlp.fc1.weight", (None,))[0]
    out.tokens, out.class_token = own["pos_embed"][1], "cls_token" in own
    out.head_classes = own["head.weight"][0] if "head.weight" in own else None  # MoCo's projection: head.0.*
    out.pre_logits = any(k.startswith("pre_logits.") for k in own)
    out.params = sum(_numel(s) for k, s in own.items() if not k.startswith(_DROP_PREFIXES))
    out.pos_embed = pos_embed_kind(read_pos(prefix + "pos_embed")[0], out.class_token)
    return out


# -- readers ---------------------------------------------------------------------------------------

def _npz(path: str, out: Summary) -> Summary:
    with zipfile.ZipFile(path) as z:
        shapes: Shapes = {}
        for info in z.infolist():
            if info.filename.endswith(".npy"):
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                        np.lib.format.read_array_header_2_0
                    shapes[info.filename[:-4]] = tuple(read(f)[0])

        def read_pos(name: str) -> np.ndarray:
            with z.open(name + ".npy") as f:
                return np.lib.format.read_array(f)

        return npz_summary(out, shapes, read_pos)


def _safetensors(path: str, out: Summary) -> Summary:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        return state_summary(out, shapes, None, f.get_tensor)


def _torch(path: str, out: Summary) -> Summary:
    wrapper, state = _raw_state(path)  # memory-mapped: shapes without reading the tensors
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return state_summary(out, shapes, wrapper, lambda name: state[name].float().numpy())


def summary_of_keys(path: str, keys: FileKeys) -> Summary:
    """The Summary of a .safetensors / torch file from its keys as weights.read_checkpoint read
    them: what `summarize(path)` gives, without the file."""
    out = Summary(path, keys.size, "safetensors" if path.endswith(".safetensors") else "torch", "unknown")
    return state_summary(out, keys.shapes, keys.wrapper, lambda name: keys.pos_embeds[name].float().numpy())


def summarize(path: str) -> Summary:
    """The Summary of a local weight file; CheckpointError when it is none of the three containers."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    size = os.path.getsize(path)
    if path.endswith(".safetensors"):
        return _safetensors(path, Summary(path, size, "safetensors", "unknown"))
    if path.endswith(".npz"):
        try:
            return _npz(path, Summary(path, size, "npz", "unknown"))
        except (zipfile.BadZipFile, ValueError, OSError) as exc:
            raise CheckpointError(f"{path}: not a readable .npz archive: {exc}") from None
    return _torch(path, Summary(path, size, "torch", "unknown"))
