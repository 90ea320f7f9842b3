"""Build a frozen-ready timm VisionTransformer from the registry; weights only from local files."""
from __future__ import annotations

from typing import Optional, Union

import torch
from timm.models.vision_transformer import VisionTransformer

from .weights import Checkpoint, PathLike, load_backbone_weights, read_checkpoint
from spt_dist.config.registry import BackboneSpec, backbone_spec, normalization

__all__ = ["build_backbone", "backbone_spec", "normalization"]


def build_backbone(name: str, img_size: Optional[int] = None, in_chans: Optional[int] = None,
                   checkpoint: Union[PathLike, Checkpoint, None] = None,
                   checkpoint_format: str = "auto") -> VisionTransformer:
    """A timm VisionTransformer for registry entry `name`: no head, no drop rates, eval mode.

    With `checkpoint` the weights come from that local file (see weights.py); the final
    norm is placed where the file has it (`norm`, or `fc_norm` for global-pooled MAE).
    Without one the weights are timm's random init (for the pretrain recipe and tests).
    """
    spec: BackboneSpec = backbone_spec(name)
    ckpt = None
    if checkpoint is not None:
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint, checkpoint_format)
    kwargs = dict(
        img_size=img_size or spec.img_size,
        patch_size=spec.patch_size,
        in_chans=in_chans or spec.in_chans,
        num_classes=0,
        global_pool="token" if spec.class_token else "avg",
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_ratio,
        class_token=spec.class_token,
        reg_tokens=spec.reg_tokens,
        no_embed_class=spec.no_embed_class,
        fc_norm=bool(ckpt is not None and ckpt.uses_fc_norm),
        drop_rate=0.0, pos_drop_rate=0.0, patch_drop_rate=0.0, proj_drop_rate=0.0,
        attn_drop_rate=0.0, drop_path_rate=0.0,
    )
    kwargs.update(spec.extra)
    # Built on the meta device, then given memory once: constructing ViT-H/14 directly runs
    # every layer's default init and takes ~12 s before the real init or load even starts.
    with torch.device("meta"):
        model = VisionTransformer(**kwargs)
    if any(True for _ in model.buffers()):  # to_empty would leave buffers uninitialised
        model = VisionTransformer(**kwargs)
    else:
        model.to_empty(device="cpu")
        if ckpt is None:
            model.init_weights(needs_reset=True)  # timm's init: trunc-normal linears, unit norms
    if ckpt is not None:
        load_backbone_weights(model, ckpt)  # writes every tensor, or raises naming the missing ones
    return model.eval()
