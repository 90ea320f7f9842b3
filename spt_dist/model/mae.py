"""A masked autoencoder (He et al., MAE, CVPR 2022) around a registry backbone, and its file in
MAE's own layout.

The encoder IS the timm VisionTransformer of `build_backbone` (its patch_embed, blocks, norm),
run on the visible patches only; the light decoder carries MAE's key names (decoder_embed,
mask_token, decoder_pos_embed, decoder_blocks.N, decoder_norm, decoder_pred). Both position
embeddings are MAE's fixed 2-D sin-cos tables (class row zero), so `state_dict()` has the
names and contents of a checkpoint written by facebookresearch/mae main_pretrain.py, and the
saved file loads through the `mae` format path (spt_dist.model.weights) like a real one.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from spt_dist.io import atomic_path

from .sincos import mae_sincos


def sincos_with_class_row(dim: int, grid: int) -> torch.Tensor:
    """(1, 1 + grid^2, dim): MAE's get_2d_sincos_pos_embed(..., cls_token=True)."""
    table = torch.from_numpy(mae_sincos(dim, grid)).float()
    return torch.cat([torch.zeros(1, dim), table])[None]


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, patch * patch * C), row-major patches, pixels in (row, col, channel)
    order within a patch (MAE's patchify: 'nchpwq->nhwpqc')."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def random_masking(n: int, length: int, mask_ratio: float, generator: Optional[torch.Generator] = None,
                   device: Optional[torch.device] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample random masking by argsort of uniform noise (MAE's recipe).

    Returns (ids_keep (n, keep), mask (n, length) with 1 = masked, ids_restore (n, length)), where
    keep = int(length * (1 - mask_ratio)); the same number of patches is hidden in every sample.
    """
    keep = int(length * (1 - mask_ratio))
    noise = torch.rand(n, length, generator=generator, device=device)
    ids_shuffle = noise.argsort(dim=1)  # small noise: kept
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(n, length, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], mask.gather(1, ids_restore), ids_restore


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error over the masked patches only; with `norm_pix` the target pixels of each
    patch are normalised by that patch's mean and (unbiased) variance, eps 1e-6 (norm_pix_loss)."""
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MaskedAutoencoder(nn.Module):
    """MAE: encoder = a class-token timm ViT on the visible patches; decoder = `decoder_depth`
    narrow Blocks over all positions (mask tokens where patches are hidden) predicting pixels."""

    def __init__(self, encoder: VisionTransformer, decoder_dim: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 4, mask_ratio: float = 0.75, norm_pix: bool = True):
        super().__init__()
        if not encoder.has_class_token or encoder.num_reg_tokens or encoder.no_embed_class:
            raise ValueError("the MAE recipe needs a ViT with a class token, no register tokens and "
                             "no_embed_class=False (MAE's encoder layout)")
        self.encoder = encoder
        self.mask_ratio, self.norm_pix = mask_ratio, norm_pix
        self.patch = encoder.patch_embed.patch_size[0]
        grid = encoder.patch_embed.grid_size[0]
        width, in_chans = encoder.embed_dim, encoder.patch_embed.proj.in_channels
        self.decoder_embed = nn.Linear(width, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_with_class_row(decoder_dim, grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True,
                                                  norm_layer=_layer_norm) for _ in range(decoder_depth))
        self.decoder_norm = _layer_norm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * in_chans)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's init: fixed sin-cos pos_embed; xavier-uniform linears and patch projection (as a
        linear); zero biases; unit LayerNorms; class and mask tokens normal(0, 0.02)."""
        enc = self.encoder
        enc.pos_embed.data.copy_(sincos_with_class_row(enc.embed_dim, enc.patch_embed.grid_size[0]))
        enc.pos_embed.requires_grad_(False)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = enc.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(enc.patch_embed.proj.bias)
        nn.init.normal_(enc.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def encode(self, images: torch.Tensor, mask_ratio: float,
               generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(normed tokens [cls, visible patches], mask, ids_restore). Position embeddings are
        added before masking, so every kept patch keeps its own position."""
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
        ids_keep, mask, ids_restore = random_masking(x.shape[0], x.shape[1], mask_ratio, generator, x.device)
        x = x.gather(1, ids_keep[..., None].expand(-1, -1, x.shape[2]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = enc.norm_pre(torch.cat([cls, x], dim=1))
        for block in enc.blocks:
            x = block(x)
        return enc.norm(x), mask, ids_restore

    def decode(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(B, L, patch * patch * C): the predicted pixels of every patch (class token dropped)."""
        x = self.decoder_embed(tokens)
        hidden = ids_restore.shape[1] + 1 - x.shape[1]
        patches = torch.cat([x[:, 1:], self.mask_token.expand(x.shape[0], hidden, -1)], dim=1)
        patches = patches.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[2]))  # original order
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, images: torch.Tensor, generator: Optional[torch.Generator] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predicted pixels, mask) for a batch of normalised images."""
        tokens, mask, ids_restore = self.encode(images, self.mask_ratio, generator)
        pred = self.decode(tokens, ids_restore)
        return reconstruction_loss(pred, patchify(images, self.patch), mask, self.norm_pix), pred, mask

    def mae_state_dict(self) -> Dict[str, torch.Tensor]:
        """The state dict under MAE's names: the encoder's keys at top level (cls_token, pos_embed,
        patch_embed.*, blocks.N.*, norm.*), then the decoder's (head.* and fc_norm never exist)."""
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}
        enc = {k: v for k, v in self.encoder.state_dict().items() if not k.startswith(("head.", "fc_norm."))}
        return {**enc, **own}


def _layer_norm(dim: int, **kwargs) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)  # MAE's models use LayerNorm(eps=1e-6)


def save_mae_checkpoint(model: MaskedAutoencoder, path: os.PathLike, args: Dict[str, object],
                        metadata: Dict[str, str], dtype: torch.dtype = torch.float32) -> str:
    """Write `{'model': state_dict, 'epoch': ..., 'args': Namespace, 'spt_metadata': {...}}` as
    main_pretrain.py's misc.save_model does (no optimizer or scaler state: the file is for use,
    not for resuming), atomically. `dtype` (fp16 for the committed assets) applies to every tensor."""
    path = Path(os.path.expanduser(str(path)))
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().to(dtype).contiguous().clone() for k, v in model.mae_state_dict().items()}
    payload = {"model": state, "epoch": int(args.get("epochs", 0)) - 1, "args": argparse.Namespace(**args),
               "spt_metadata": {str(k): str(v) for k, v in metadata.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return str(path)
