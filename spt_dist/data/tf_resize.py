"""TensorFlow 1's bilinear resize in numpy: the resize of VPT's VTAB pipeline.

VPT calls `tf.image.resize` from `tensorflow.compat.v1`, i.e. `resize_bilinear` with
align_corners=False and half_pixel_centers=False. Output pixel (y, x) samples the source at
(y x in_h / out_h, x x in_w / out_w): no half-pixel offset, no antialiasing when shrinking,
and float output that is never rounded to uint8. Positions and weights are computed in
float32, as TensorFlow's kernel computes them, so both pick the same source pixels.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def _axis(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower, upper, weight of upper) per output position along one axis."""
    scale = np.float32(in_size) / np.float32(out_size)
    pos = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(pos)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(pos).astype(np.int64), in_size - 1)
    return lower, upper, (pos - floor).astype(np.float32)


def resize_bilinear_tf1(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) pixels -> float32 (height, width, C), as TF1's legacy bilinear resize.

    Along x first, then y, as TensorFlow: top = TL + (TR - TL) wx, bottom = BL + (BR - BL) wx,
    out = top + (bottom - top) wy. Interpolating every source row along x once and then
    picking rows gives the same numbers as per output pixel, in far fewer gathers.
    """
    img = np.asarray(image)
    if img.shape[:2] == (height, width):
        return img.astype(np.float32)  # TensorFlow returns the input unchanged
    y0, y1, wy = _axis(img.shape[0], height)
    x0, x1, wx = _axis(img.shape[1], width)
    rows = np.take(img, x0, axis=1).astype(np.float32)
    right = np.take(img, x1, axis=1).astype(np.float32)
    right -= rows
    right *= wx[None, :, None]
    rows += right
    top, bottom = np.take(rows, y0, axis=0), np.take(rows, y1, axis=0)
    bottom -= top
    bottom *= wy[:, None, None]
    top += bottom
    return top
