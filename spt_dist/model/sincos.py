"""Fixed 2-D sin-cos position embeddings, as the two self-supervised codes build them, and
telling a file's pos_embed apart from them (numpy only: both the readers and the summaries use it)."""
from __future__ import annotations

import math

import numpy as np


def mae_sincos(dim: int, grid: int) -> np.ndarray:
    """facebookresearch/mae util/pos_embed.py get_2d_sincos_pos_embed (without the class row)."""
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    w, h = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    return np.concatenate([one_d(dim // 2, w), one_d(dim // 2, h)], axis=1)


def mocov3_sincos(dim: int, grid: int) -> np.ndarray:
    """facebookresearch/moco-v3 vits.py build_2d_sincos_position_embedding (without the class row)."""
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    out_w, out_h = np.outer(gw.reshape(-1), omega), np.outer(gh.reshape(-1), omega)
    return np.concatenate([np.sin(out_w), np.cos(out_w), np.sin(out_h), np.cos(out_h)], axis=1)


def pos_embed_kind(pos: np.ndarray, class_token: bool) -> str:
    """learned, sincos-mae, sincos-mocov3, or sincos (every sin/cos pair of a row sums to 1)."""
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, pos.shape[-1])
    rows, dim = (pos[1:], pos.shape[1]) if class_token else (pos, pos.shape[1])
    if (class_token and np.abs(pos[0]).max() > 1e-6) or not np.allclose((rows ** 2).sum(1), dim / 2, rtol=1e-3):
        return "learned"
    grid = math.isqrt(len(rows))
    if grid * grid == len(rows):
        for kind, table in (("sincos-mae", mae_sincos), ("sincos-mocov3", mocov3_sincos)):
            if np.allclose(rows, table(dim, grid), atol=1e-3):
                return kind
    return "sincos"
