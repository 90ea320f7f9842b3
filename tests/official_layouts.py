"""The key layouts the papers' backbone files are published in, written with the test's own tensors.

Names and shapes follow each publisher's code: Google's JAX ViT (vit_jax; what timm's npz
reader loads), MAE's {'model': ...} encoder, MoCo v3's DistributedDataParallel checkpoints of
main_moco.py and main_lincls.py, timm's state dict. Torch files at the real sizes cost nothing:
every tensor but the position embedding is a zero-stride view of one element, so the file holds
the real names and shapes in a few hundred KB. The fixed sin-cos position embeddings are
transcribed from the two official codes (the references the package's detector is checked
against).
"""
from __future__ import annotations

import functools
from typing import Dict, Optional, Tuple

import numpy as np
import torch

Shapes = Dict[str, Tuple[int, ...]]


def mae_reference_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py get_2d_sincos_pos_embed(..., cls_token=True), transcribed."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float32)
        omega /= dim / 2.
        omega = 1. / 10000 ** omega
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)[None].astype(np.float32)


def mocov3_reference_sincos(embed_dim: int, grid_size: int) -> np.ndarray:
    """facebookresearch/moco-v3 vits.py build_2d_sincos_position_embedding, transcribed."""
    grid_w = torch.arange(grid_size, dtype=torch.float32)
    grid_h = torch.arange(grid_size, dtype=torch.float32)
    grid_w, grid_h = torch.meshgrid(grid_w, grid_h, indexing="ij")
    pos_dim = embed_dim // 4
    omega = 1. / (10000. ** (torch.arange(pos_dim, dtype=torch.float32) / pos_dim))
    out_w = torch.einsum('m,d->md', [grid_w.flatten(), omega])
    out_h = torch.einsum('m,d->md', [grid_h.flatten(), omega])
    pos_emb = torch.cat([torch.sin(out_w), torch.cos(out_w), torch.sin(out_h), torch.cos(out_h)], dim=1)[None]
    return torch.cat([torch.zeros([1, 1, embed_dim]), pos_emb], dim=1).numpy()


def pos_embed(kind: str, width: int, tokens: int, seed: int = 0) -> np.ndarray:
    grid = int(round((tokens - 1) ** 0.5))
    if kind == "sincos-mae":
        return mae_reference_sincos(width, grid)
    if kind == "sincos-mocov3":
        return mocov3_reference_sincos(width, grid)
    return np.random.default_rng(seed).normal(0, 0.02, (1, tokens, width)).astype(np.float32)


def jax_shapes(patch: int, width: int, depth: int, heads: int, mlp: int, tokens: int,
               head_classes: Optional[int], pre_logits: bool) -> Shapes:
    """Google's ImageNet-21k .npz files (vit_jax names)."""
    d, hd = width, width // heads
    out: Shapes = {"embedding/kernel": (patch, patch, 3, d), "embedding/bias": (d,), "cls": (1, 1, d),
                   "Transformer/posembed_input/pos_embedding": (1, tokens, d),
                   "Transformer/encoder_norm/scale": (d,), "Transformer/encoder_norm/bias": (d,)}
    for i in range(depth):
        p = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            out[f"{p}{ln}/scale"] = out[f"{p}{ln}/bias"] = (d,)
        for part in ("query", "key", "value"):
            out[f"{p}MultiHeadDotProductAttention_1/{part}/kernel"] = (d, heads, hd)
            out[f"{p}MultiHeadDotProductAttention_1/{part}/bias"] = (heads, hd)
        out[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = (heads, hd, d)
        out[f"{p}MultiHeadDotProductAttention_1/out/bias"] = (d,)
        out[f"{p}MlpBlock_3/Dense_0/kernel"], out[f"{p}MlpBlock_3/Dense_0/bias"] = (d, mlp), (mlp,)
        out[f"{p}MlpBlock_3/Dense_1/kernel"], out[f"{p}MlpBlock_3/Dense_1/bias"] = (mlp, d), (d,)
    if head_classes:
        out["head/kernel"], out["head/bias"] = (d, head_classes), (head_classes,)
    if pre_logits:
        out["pre_logits/kernel"], out["pre_logits/bias"] = (d, d), (d,)
    return out


def write_npz(path, shapes: Shapes, pos: np.ndarray, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    arrays = {k: rng.normal(0, 0.05, s).astype(np.float32) for k, s in shapes.items()}
    arrays["Transformer/posembed_input/pos_embedding"] = pos
    np.savez(path, **arrays)


def _vit(patch: int, width: int, depth: int, heads: int, mlp: int, tokens: int, head_classes: Optional[int]):
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=int(round((tokens - 1) ** 0.5)) * patch, patch_size=patch, embed_dim=width,
                             depth=depth, num_heads=heads, mlp_ratio=mlp / width, num_classes=head_classes or 0)


@functools.lru_cache(maxsize=None)
def timm_shapes(patch: int, width: int, depth: int, heads: int, mlp: int, tokens: int,
                head_classes: Optional[int]) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """Names and shapes of timm's VisionTransformer (built on the meta device: no memory)."""
    with torch.device("meta"):
        vit = _vit(patch, width, depth, heads, mlp, tokens, head_classes)
    return tuple((k, tuple(v.shape)) for k, v in vit.state_dict().items())


def timm_state(patch: int, width: int, depth: int, heads: int, mlp: int, tokens: int,
               head_classes: Optional[int], real: bool) -> Dict[str, torch.Tensor]:
    """timm's VisionTransformer state dict; `real` False: zero-stride stubs of the real shapes."""
    if real:
        return _vit(patch, width, depth, heads, mlp, tokens, head_classes).state_dict()
    return {k: torch.zeros(()).expand(*s) for k, s in timm_shapes(patch, width, depth, heads, mlp, tokens,
                                                                   head_classes)}


def wrap(layout: str, state: Dict[str, torch.Tensor], pos: np.ndarray) -> dict:
    """A timm state dict in `layout`, as its publisher's code saves it (real-valued pos_embed)."""
    state = dict(state, pos_embed=torch.from_numpy(pos))
    stub = lambda *s: torch.zeros(()).expand(*s)  # noqa: E731
    width = state["cls_token"].shape[-1]
    if layout == "mae-pretrain":
        return {"model": state}
    if layout == "mocov3-pretrain":
        # main_moco.py: DDP(MoCo_ViT) -> module.{base_encoder, momentum_encoder, predictor}; the encoders'
        # head is the projection MLP (moco/builder.py _build_mlp: Linear, BN, ReLU, ..., Linear, BN).
        enc = {k: v for k, v in state.items() if not k.startswith("head.")}
        enc.update({"head.0.weight": stub(4096, width), "head.1.weight": stub(4096), "head.1.bias": stub(4096),
                    "head.6.weight": stub(256, 4096)})
        sd = {f"module.base_encoder.{k}": v for k, v in enc.items()}
        sd.update({f"module.momentum_encoder.{k}": v for k, v in enc.items()})
        sd.update({"module.predictor.0.weight": stub(4096, 256), "module.predictor.3.weight": stub(256, 4096)})
        return {"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}
    if layout == "mocov3-linear":
        # main_lincls.py: DDP(vit_base) with its 1000-class head, plus best_acc1 and the SGD state.
        return {"epoch": 90, "arch": "vit_base", "state_dict": {f"module.{k}": v for k, v in state.items()},
                "best_acc1": torch.tensor(76.7), "optimizer": {"state": {}, "param_groups": []}}
    return state  # timm
