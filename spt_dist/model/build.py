"""Config -> PromptedViT: the one place that maps method settings onto the model wrapper."""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from torch import nn

from spt_dist.config import Config
from spt_dist.config.hub import resolve_checkpoint
from spt_dist.config.registry import backbone_spec, normalization

from .backbone import build_backbone
from .prompted_vit import PromptedViT
from .weights import Checkpoint, checkpoint_format, read_checkpoint


class InputSpec(NamedTuple):
    """What the data stage must feed the run's backbone."""
    img_size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]


def read_weights(cfg: Config) -> Optional[Checkpoint]:
    """The run's weight file (a path or an hf-hub name in the local cache), read once (None without
    one); build_model and input_spec take it."""
    m = cfg.model
    if not m.checkpoint:
        return None
    return read_checkpoint(resolve_checkpoint(m.checkpoint), m.checkpoint_format, mae_head_norm=m.mae_head_norm)


def input_spec(cfg: Config, fmt: Optional[str] = None) -> InputSpec:
    """(img_size, mean, std) the run's backbone expects. `fmt`, the weight file's format when
    the caller has read it, saves looking at the file again."""
    img_size = cfg.model.img_size or backbone_spec(cfg.model.name).img_size
    if cfg.model.mean is not None:  # the user knows better than the format's recipe
        return InputSpec(img_size, tuple(cfg.model.mean), tuple(cfg.model.std))
    mean, std = normalization(cfg.model.name, fmt if fmt is not None else checkpoint_format(cfg))
    return InputSpec(img_size, tuple(mean), tuple(std))


def resolve_pool(cfg: Config, fmt: Optional[str] = None) -> str:
    """model.pool; "auto" -> "token" (class token) for supervised and MoCo v3 backbones; for MAE
    backbones (or without a class token) the mean over tokens, prompts included as in VPT's
    MAE code ("mean_with_prompts"; "mean" when there are no prompts).

    `fmt` (the checkpoint's format) saves looking at the file when the caller already knows it.
    """
    if cfg.model.pool != "auto":
        return cfg.model.pool
    fmt = fmt if fmt is not None else checkpoint_format(cfg)
    if backbone_spec(cfg.model.name).class_token and fmt != "mae":
        return "token"
    return "mean_with_prompts" if cfg.method.prompt_length else "mean"


def build_model(cfg: Config, num_classes: int, weights: Optional[Checkpoint] = None) -> PromptedViT:
    """The model of a run: backbone (local checkpoint loaded) + prompts + head, per cfg.method.
    `weights`: the file already read by `read_weights` (read here otherwise)."""
    ckpt = weights if weights is not None else read_weights(cfg)
    return wrap_backbone(cfg, build_run_backbone(cfg, ckpt), num_classes, ckpt.fmt if ckpt else None)


def build_run_backbone(cfg: Config, weights: Optional[Checkpoint]) -> nn.Module:
    """The run's timm backbone with its weights loaded (draws from the global RNG for timm's init)."""
    m = cfg.model
    return build_backbone(m.name, img_size=m.img_size, in_chans=m.in_chans, checkpoint=weights)


def wrap_backbone(cfg: Config, backbone: nn.Module, num_classes: int, fmt: Optional[str]) -> PromptedViT:
    """Prompts + head around `backbone` per cfg.method (a packed run's members share one backbone).
    `fmt`: the weight file's format (decides the pool under model.pool=auto)."""
    m = cfg.model
    return PromptedViT(
        backbone,
        num_classes=num_classes,
        prompt_length=cfg.method.prompt_length,
        deep=cfg.method.deep,
        prompt_dropout=cfg.method.prompt_dropout,
        pool=resolve_pool(cfg, fmt),
        train_backbone=cfg.method.name == "full",
        grad_checkpointing=m.grad_checkpointing,
        head_init=m.head_init,
        head_init_std=m.head_init_std,
    )
