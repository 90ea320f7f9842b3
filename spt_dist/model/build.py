"""Config -> PromptedViT: the one place that maps method settings onto the model wrapper."""
from __future__ import annotations

from typing import Optional

from spt_dist.config import Config

from .backbone import build_backbone
from .checkpoints import Checkpoint, read_checkpoint
from .prompted_vit import PromptedViT
from .registry import backbone_spec


def _checkpoint_format(cfg: Config) -> Optional[str]:
    if not cfg.model.checkpoint:
        return None
    if cfg.model.checkpoint_format != "auto":
        return cfg.model.checkpoint_format
    return read_checkpoint(cfg.model.checkpoint).fmt


def resolve_pool(cfg: Config, checkpoint_format: Optional[str] = None) -> str:
    """model.pool, with "auto" -> "token" for class-token backbones not from MAE, else "mean".

    `checkpoint_format` saves re-reading the file when the caller already resolved it.
    """
    if cfg.model.pool != "auto":
        return cfg.model.pool
    fmt = checkpoint_format if checkpoint_format is not None else _checkpoint_format(cfg)
    return "token" if backbone_spec(cfg.model.name).class_token and fmt != "mae" else "mean"


def build_model(cfg: Config, num_classes: int) -> PromptedViT:
    """The model of a run: backbone (local checkpoint loaded) + prompts + head, per cfg.method."""
    m = cfg.model
    ckpt: Optional[Checkpoint] = read_checkpoint(m.checkpoint, m.checkpoint_format) if m.checkpoint else None
    backbone = build_backbone(m.name, img_size=m.img_size, in_chans=m.in_chans, checkpoint=ckpt)
    return PromptedViT(
        backbone,
        num_classes=num_classes,
        prompt_length=cfg.method.prompt_length,
        deep=cfg.method.deep,
        prompt_dropout=cfg.method.prompt_dropout,
        pool=resolve_pool(cfg, ckpt.fmt if ckpt else None),
        train_backbone=cfg.method.name == "full",
        grad_checkpointing=m.grad_checkpointing,
    )
