"""Backbone weights from local files: timm / ImageNet-21k (.safetensors, .pth, .bin, .npz),
MAE and MoCo v3. Loads are strict: a missing or unexpected tensor is a CheckpointError that
lists the names, never a silent partial load. Nothing is ever downloaded."""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from spt_dist.config import Config
from spt_dist.config.hub import resolve_checkpoint
from spt_dist.errors import SptError
from spt_dist.io import atomic_path

from .sincos import pos_embed_kind

FORMATS = ("timm", "npz", "mae", "mocov3")
MAE_HEAD_NORMS = ("new", "pretrained")
PathLike = Union[str, os.PathLike]

# Keys a backbone never has: classifier heads, MAE's decoder and mask token, MoCo v3's
# projection/prediction MLPs (they live under head.* / predictor.*).
_DROP_PREFIXES = ("head.", "decoder_", "decoder.", "mask_token", "predictor.", "pre_logits.")
_MOCO_PREFIXES = ("module.base_encoder.", "module.")
_WRAPPERS = ("model", "state_dict", "module")


class CheckpointError(SptError, ValueError):
    """A weights file that cannot be loaded into the backbone; the message names the file and keys."""


class UndecidedFormatError(CheckpointError):
    """A readable weight file whose format model.checkpoint_format=auto does not decide."""


@dataclass
class FileKeys:
    """A state-dict file's own layout, as read: what summary.py summarises without the file."""
    wrapper: Optional[str]                  # the dict the state sat in ('model', 'state_dict', ...)
    shapes: Dict[str, Tuple[int, ...]]      # every key of the file
    pos_embeds: Dict[str, torch.Tensor]     # the position embeddings: the only values it reads
    size: int                               # bytes on disk


@dataclass
class Checkpoint:
    """A weights file read once: its format and (for state-dict formats) the backbone tensors,
    and what the weights check needs of the file, from the same read."""
    path: str
    fmt: str
    state: Dict[str, torch.Tensor] = field(default_factory=dict)  # empty for npz (read by timm)
    keys: Optional[FileKeys] = None      # None for npz (the check reads its headers)
    detected: Optional[str] = None       # what checkpoint_format=auto reads it as; None: undecided, see
    undecided: Optional[str] = None      # why (detect_format's CheckpointError)

    @property
    def uses_fc_norm(self) -> bool:
        """MAE (and timm's avg-pool ViTs) normalise the pooled feature (fc_norm), not every token."""
        return self.fmt == "mae" or ("fc_norm.weight" in self.state and "norm.weight" not in self.state)


def _looks_like_torch_save(path: str) -> bool:
    """torch.save writes a zip archive (since 1.6) or, before, a pickle (protocol 2+: 0x80 first)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return True  # torch.load names the error
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _torch_load(path: str) -> object:
    # weights_only: a checkpoint is data, not code. MAE's training checkpoints also pickle
    # their argparse.Namespace, which is allowed explicitly.
    if not _looks_like_torch_save(path):
        raise CheckpointError(f"{path}: not a weights file (neither a PyTorch checkpoint, a zip archive or a "
                              f"pickle, nor .safetensors or .npz by its name)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            try:
                # mmap: tensors are read when copied into the model, so detecting the format
                # of a 2.5 GB ViT-H file costs almost nothing.
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # pre-1.6 file layout
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: holds pickled objects other than tensors and plain containers, which are not "
            f"loaded for safety ({str(exc).splitlines()[0]}); re-save its state dict with "
            f"torch.save(state_dict, ...) or as .safetensors") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {exc}") from None


def _unwrap(obj: object, path: str) -> Dict[str, torch.Tensor]:
    """Descend into {'model': ...} (MAE, DeiT) / {'state_dict': ...} (MoCo v3, timm train)."""
    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise CheckpointError(f"{path}: no state dict found; top-level keys: {', '.join(map(str, obj))} "
                                  f"(expected tensors, or one of {', '.join(_WRAPPERS)})")
        obj = inner
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return obj


def _raw_state(path: str) -> tuple:
    """(wrapper key or None, flat state dict) of a .safetensors / torch file."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return None, load_file(path)
    obj = _torch_load(path)
    wrapper = next((k for k in _WRAPPERS if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    return wrapper, _unwrap(obj, path)


_MAE_MARKS = ("decoder", "mask_token")  # only MAE's pretraining has these


def _classify(wrapper: Optional[str], state: Dict[str, torch.Tensor], path: str) -> str:
    """Format from positive evidence only; a {'model': ...} file that could be either is an error."""
    keys = list(state)
    if any(k.startswith("module.") for k in keys):
        return "mocov3"
    if any(k.startswith(_MAE_MARKS) for k in keys):
        return "mae"
    if wrapper == "model":
        if any(k.startswith("fc_norm") for k in keys):
            return "mae"  # MAE's global-pool fine-tuning layout
        if any(k.startswith("head.") for k in keys):
            return "timm"  # a supervised {'model': ...} file (DeiT) keeps its classifier
        raise UndecidedFormatError(
            f"{path}: a {{'model': ...}} file without a head and without MAE's decoder, mask_token or "
            f"fc_norm: an MAE encoder (released pretraining files look like this) or a supervised "
            f"backbone saved without its head, which pool and normalise differently; say which with "
            f"model.checkpoint_format=mae or model.checkpoint_format=timm")
    if not any(k.startswith(("head.", "fc_norm")) for k in keys) and _mae_positions(state, "cls_token" in state):
        raise UndecidedFormatError(
            f"{path}: a file without a head or fc_norm whose pos_embed is MAE's fixed sin-cos: an MAE encoder "
            f"in timm's names (timm's vit_*.mae files look like this), which MAE's recipes pool by the mean of "
            f"the tokens and timm by the class token; say which with model.checkpoint_format=mae or "
            f"model.checkpoint_format=timm")
    return "timm"


def _mae_positions(state: Dict[str, object], class_token: bool) -> bool:
    """Whether the file's pos_embed is MAE's fixed 2-D sin-cos table (positive evidence of MAE)."""
    pos = state.get("pos_embed")
    if not isinstance(pos, torch.Tensor) or pos.ndim != 3 or pos.shape[1] < 2:
        return False
    return pos_embed_kind(pos[0].float().numpy(), class_token) == "sincos-mae"


def detect_format(path: PathLike) -> str:
    """One of FORMATS, from the file name and the key layout inside it.

    .npz -> npz; `module.`-prefixed keys -> mocov3; MAE's decoder or mask token, or a
    {'model': ...} dict with fc_norm -> mae; a {'model': ...} dict with a head -> timm; one
    with neither -> CheckpointError (ambiguous: set the format); another file without a head
    or fc_norm whose pos_embed is MAE's sin-cos table (timm's copies of MAE) -> CheckpointError
    too; anything else -> timm.
    """
    path = os.path.expanduser(str(path))
    if path.endswith(".safetensors") and os.path.isfile(path):
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:  # keys, and only pos_embed of the tensors
            state = dict.fromkeys(f.keys())
            if "pos_embed" in state:
                state["pos_embed"] = f.get_tensor("pos_embed")
            return _classify(None, state, path)
    return read_checkpoint(path).fmt


def checkpoint_format(cfg: Config) -> Optional[str]:
    """The run's weight file's format (None without one), as the engine reads it: "auto" is
    detect_format of the file (a path, or an hf-hub name in the local cache)."""
    if not cfg.model.checkpoint:
        return None
    if cfg.model.checkpoint_format != "auto":
        return cfg.model.checkpoint_format
    return detect_format(resolve_checkpoint(cfg.model.checkpoint))


def _strip_prefix(state: Dict[str, torch.Tensor], path: str) -> Dict[str, torch.Tensor]:
    for prefix in _MOCO_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            # Only the base encoder: momentum encoder and predictor keys fall away here.
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    raise CheckpointError(f"{path}: MoCo v3 checkpoint without 'module.base_encoder.' or 'module.' keys")


def read_checkpoint(path: PathLike, fmt: str = "auto", mae_head_norm: str = "new") -> Checkpoint:
    """Read a weights file once: resolve its format and the backbone tensors (heads dropped).

    `mae_head_norm` (MAE pretraining files only): the LayerNorm applied after mean pooling is
    "new" (weight 1, bias 0) or the "pretrained" per-token `norm` (see _mae_pretrain_to_global_pool).
    """
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    if fmt not in FORMATS + ("auto",):
        raise CheckpointError(f"{path}: unknown checkpoint format '{fmt}'; allowed: auto, {', '.join(FORMATS)}")
    if mae_head_norm not in MAE_HEAD_NORMS:
        raise CheckpointError(f"mae_head_norm '{mae_head_norm}' is not allowed; allowed: {', '.join(MAE_HEAD_NORMS)}")
    if path.endswith(".npz") or fmt == "npz":
        if fmt not in ("auto", "npz"):
            raise CheckpointError(f"{path}: a .npz file is format 'npz', not '{fmt}'")
        return Checkpoint(path, "npz", detected="npz")
    wrapper, state = _raw_state(path)
    keys = FileKeys(wrapper, {k: tuple(v.shape) for k, v in state.items()},
                    {k: v for k, v in state.items() if k.endswith("pos_embed")}, os.path.getsize(path))
    try:
        detected, undecided = _classify(wrapper, state, path), None
    except CheckpointError as exc:
        if fmt == "auto":
            raise
        detected, undecided = None, str(exc)
    resolved = detected if fmt == "auto" else fmt
    if any(k.startswith("module.") for k in state):
        state = _strip_prefix(state, path)
    state = {k: v for k, v in state.items() if not k.startswith(_DROP_PREFIXES)}
    if resolved == "mae" and "norm.weight" in state and "fc_norm.weight" not in state:
        state = _mae_pretrain_to_global_pool(state, keep_norm=mae_head_norm == "pretrained")
    return Checkpoint(path, resolved, state, keys, detected, undecided)


def _mae_pretrain_to_global_pool(state: Dict[str, torch.Tensor], keep_norm: bool) -> Dict[str, torch.Tensor]:
    """An MAE pretraining file's norm for mean pooling: the pooled feature is the mean of the
    tokens followed by `fc_norm`, and there is no per-token norm. `fc_norm` is a NEW LayerNorm
    (weight 1, bias 0: MAE's fine-tuning code, VPT's vit_mae.py) or, with `keep_norm`, the
    pretrained `norm` applied to the pooled vector (SPT's Models/MAE_vit.py). Done here,
    explicitly, so that the strict key check still covers every other tensor."""
    state = dict(state)
    weight, bias = state.pop("norm.weight"), state.pop("norm.bias")
    if not keep_norm:
        weight, bias = torch.ones_like(weight), torch.zeros_like(bias)
    state["fc_norm.weight"], state["fc_norm.bias"] = weight, bias
    return state


def _adapt(model: nn.Module, key: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Resample position embeddings to the model's grid; adapt the patch conv's input channels."""
    from timm.layers import resample_abs_pos_embed
    from timm.models import adapt_input_conv

    if key == "pos_embed" and value.shape != target.shape and value.ndim == 3:
        prefix = 0 if model.no_embed_class else model.num_prefix_tokens
        return resample_abs_pos_embed(value, new_size=list(model.patch_embed.grid_size),
                                      num_prefix_tokens=prefix)
    if key == "patch_embed.proj.weight" and value.ndim == 4 and value.shape[1] != target.shape[1]:
        return adapt_input_conv(target.shape[1], value)
    return value


def _describe(names: List[str], limit: int = 20) -> str:
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _load_state(model: nn.Module, ckpt: Checkpoint) -> None:
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing = sorted(set(expected) - set(ckpt.state))
    unexpected = sorted(set(ckpt.state) - set(expected))
    if missing or unexpected:
        hint = ""
        swapped = {("norm.weight", "fc_norm.weight"), ("fc_norm.weight", "norm.weight")}
        if any(m in missing and u in unexpected for m, u in swapped):
            hint = (" (the final norm sits in 'norm' or 'fc_norm' depending on the pretraining; "
                    "build_backbone(..., checkpoint=...) picks the layout from the file)")
        raise CheckpointError(
            f"{ckpt.path} (format {ckpt.fmt}) does not match the backbone: "
            f"missing keys: [{_describe(missing)}]; unexpected keys: [{_describe(unexpected)}]{hint}")
    state = {}
    for key, value in ckpt.state.items():
        value = _adapt(model, key, value, expected[key])
        if value.shape != expected[key].shape:
            raise CheckpointError(f"{ckpt.path}: tensor '{key}' has shape {tuple(value.shape)}, "
                                  f"the backbone expects {tuple(expected[key].shape)}")
        state[key] = value
    model.load_state_dict(state, strict=False)  # head.* excluded above; everything else checked


_NPZ_TOP = {"embedding/kernel", "embedding/bias", "cls", "pos_embedding",
            "Transformer/posembed_input/pos_embedding",
            "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias"}
_NPZ_IGNORED = ("head/", "pre_logits/")
_NPZ_PREFIXES = ("", "opt/target/", "params/", "params/img/")


def _npz_unexpected(files: List[str], depth: int) -> List[str]:
    prefix = next((p for p in _NPZ_PREFIXES if f"{p}embedding/kernel" in files), "")
    out = []
    for name in files:
        if not name.startswith(prefix):
            continue  # optimizer state next to opt/target/
        key = name[len(prefix):]
        block = re.match(r"Transformer/encoderblock_(\d+)/", key)
        if key in _NPZ_TOP or key.startswith(_NPZ_IGNORED) or key.startswith("Transformer/encoderblock/"):
            continue
        if block is None or int(block.group(1)) >= depth:
            out.append(name)
    return out


def _load_npz(model: nn.Module, ckpt: Checkpoint) -> None:
    import numpy as np
    from timm.models.vision_transformer import _load_weights

    try:
        with np.load(ckpt.path, allow_pickle=False) as npz:
            unexpected = _npz_unexpected(list(npz.files), len(model.blocks))
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{ckpt.path}: not a readable .npz archive: {exc}") from None
    if unexpected:
        raise CheckpointError(f"{ckpt.path} (format npz) does not match the backbone: "
                              f"unexpected keys: [{_describe(unexpected)}]")
    params = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    with torch.no_grad():
        # timm's reader copies what it knows and skips the rest; NaN marks what it never wrote.
        for value in params.values():
            value.fill_(float("nan"))
        try:
            _load_weights(model, ckpt.path)
        except KeyError as exc:
            raise CheckpointError(f"{ckpt.path} (format npz): missing key {exc}") from None
        except (RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{ckpt.path} (format npz) does not match the backbone: {exc}") from None
    unwritten = sorted(k for k, v in params.items() if torch.isnan(v).any())
    if unwritten:
        raise CheckpointError(f"{ckpt.path} (format npz) has no weights for: [{_describe(unwritten)}]")


def load_backbone_weights(model: nn.Module, path: Union[PathLike, Checkpoint], fmt: str = "auto") -> str:
    """Load a local weights file into a timm VisionTransformer; returns the resolved format."""
    ckpt = path if isinstance(path, Checkpoint) else read_checkpoint(path, fmt)
    if ckpt.fmt == "npz":
        _load_npz(model, ckpt)
    else:
        _load_state(model, ckpt)
    return ckpt.fmt


def _backbone_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    backbone = getattr(model, "backbone", model)  # a PromptedViT or the bare backbone
    return {k: v for k, v in backbone.state_dict().items() if not k.startswith("head.")}


def weights_hash(model: nn.Module) -> str:
    """sha256 over sorted names, dtypes, shapes and bytes of the backbone's tensors.

    Deterministic across processes; computed on the weights as they are (hash before any
    bf16 cast if the hash must match an fp32 run).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(_backbone_state(model).items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_backbone_weights(model: nn.Module, path: PathLike, metadata: Optional[Dict[str, str]] = None) -> str:
    """Write the backbone (head excluded) as .safetensors, atomically; returns the path."""
    from safetensors.torch import save_file

    path = Path(os.path.expanduser(str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in _backbone_state(model).items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "timm", **(metadata or {})})
    return str(path)
