"""Transform presets: decoded image -> normalised float32 tensor (3, H, W).

s = img_size, r = s * 256 // 224 (256 at 224, 438 at 384, 512 at 448: VPT's table).

- vtab:     resize to s x s with TensorFlow 1's bilinear resize (tf_resize.py: no half-pixel
            offset, no antialiasing, float pixels), no augmentation (VPT's VTAB pipeline).
- fgvc:     resize the SHORT side to r (bilinear); train: random s crop + horizontal flip;
            test: centre s crop (VPT's FGVC pipeline).
- spt_vtab: resize the short side to s (bicubic), centre s crop, train and test (SPT's VTAB).
- spt_fgvc: train: random resized crop to s (scale 0.08-1, ratio 3/4-4/3, bicubic) + flip;
            test: short side to r (bicubic), centre s crop (SPT's FGVC pipeline).
- small:    resize to s x s (bilinear), no augmentation (28 px demos).

The other presets compute, step by step, what torchvision's op of the same name computes on a
PIL image (sizes, crop boxes, rounding), so their pixels equal the official pipelines' (uint8);
vtab's pixels are TensorFlow's float values. Training randomness comes only from a
`random.Random` seeded by the caller per sample (loader.py seeds it from (seed, epoch, sample
key)), never from global state, so a resumed epoch is bit-identical. Every transform is
`finish(prepare(image), rng)`: `prepare` decodes and does what draws nothing, `finish` the
random crop and flip, so a kept `prepare` output (cache.py) gives the same pixels.
"""
from __future__ import annotations

import io
import math
import random
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .index import DataError
from .tf_resize import resize_bilinear_tf1
from ..config.schema import PRESETS

SCALE, RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)  # torchvision's RandomResizedCrop defaults
Box = Tuple[int, int, int, int]  # top, left, height, width (torchvision's order)


def decode_image(data: bytes, draft: Optional[int] = None) -> Image.Image:
    """RGB image; JPEGs much larger than `draft` px are decoded at a reduced DCT scale."""
    img = Image.open(io.BytesIO(data))
    if draft and img.format == "JPEG":
        img.draft("RGB", (draft, draft))  # keeps both sides >= draft: resize still sees enough pixels
    return img.convert("RGB")


def resize_short(img: Image.Image, size: int, resample: int) -> Image.Image:
    """The short side to `size`, the long side to int(size * long / short) (torchvision.Resize(size))."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new = (size, new_long) if w <= h else (new_long, size)
    return img if new == img.size else img.resize(new, resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def random_crop(img: Image.Image, size: int, rng: random.Random) -> Image.Image:
    w, h = img.size
    top, left = rng.randint(0, h - size), rng.randint(0, w - size)
    return img.crop((left, top, left + size, top + size))


def random_resized_box(width: int, height: int, rng: random.Random,
                       scale: Tuple[float, float] = SCALE, ratio: Tuple[float, float] = RATIO) -> Box:
    """RandomResizedCrop's box: 10 tries of area x aspect ratio, then a centred crop of the
    clamped aspect ratio (torchvision's get_params, drawing from `rng`)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resized_crop(img: Image.Image, box: Box, size: int, resample: int) -> Image.Image:
    """Crop, then resize to size x size (torchvision's F.resized_crop: the crop's own pixels only)."""
    top, left, h, w = box
    return img.crop((left, top, left + w, top + h)).resize((size, size), resample)


def random_flip(img: Image.Image, rng: random.Random) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def draws_randomly(preset: str, train: bool) -> bool:
    """Whether a preset's transform draws from its rng: training with fgvc / spt_fgvc (crops, flips)."""
    return train and preset in ("fgvc", "spt_fgvc")


class ImageTransform:
    def __init__(self, preset: str, img_size: int, mean: Sequence[float], std: Sequence[float], train: bool):
        if preset not in PRESETS:
            raise DataError(f"data.preset '{preset}' is not allowed; allowed: {', '.join(PRESETS)}")
        if len(mean) != 3 or len(std) != 3:
            raise DataError(f"mean/std need 3 values (RGB), got {list(mean)} / {list(std)}")
        self.preset, self.img_size, self.train = preset, img_size, train
        self.resize = img_size * 256 // 224 if preset in ("fgvc", "spt_fgvc") else img_size
        self.filter = Image.BICUBIC if preset.startswith("spt_") else Image.BILINEAR
        # The official pipelines decode at full resolution; a reduced DCT decode changes pixels.
        self.draft = img_size if preset == "small" else None
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std_t

    @property
    def random(self) -> bool:
        """Whether the transform draws from its rng: training with fgvc / spt_fgvc (crops, flips)."""
        return draws_randomly(self.preset, self.train)

    def pixels(self, data: Union[bytes, Image.Image], rng: Optional[random.Random] = None) -> np.ndarray:
        """Decoded, resized and cropped image (img_size, img_size, 3): uint8, float32 for vtab."""
        return self.finish(self.prepare(data), rng)

    def prepare(self, data: Union[bytes, Image.Image]) -> np.ndarray:
        """Decode and every step that draws nothing (what a decoded-sample cache keeps): the
        final pixels of a transform without randomness; fgvc: the short side resized; spt_fgvc:
        the decoded image (its random box is cut from the original)."""
        img = data.convert("RGB") if isinstance(data, Image.Image) else decode_image(data, draft=self.draft)
        if self.preset == "vtab":
            return resize_bilinear_tf1(np.asarray(img), self.img_size, self.img_size)
        if self.random and self.preset == "fgvc":
            img = resize_short(img, self.resize, self.filter)
        elif not self.random:
            img = self._fixed(img)
        return np.array(img, dtype=np.uint8)

    def finish(self, prepared: np.ndarray, rng: Optional[random.Random] = None) -> np.ndarray:
        """The random steps on `prepare`'s output, drawing from `rng` (the identity without randomness)."""
        if not self.random:
            return prepared
        if rng is None:
            raise ValueError(f"{self.preset} training transform needs a seeded rng")
        img, s = Image.fromarray(prepared), self.img_size
        if self.preset == "fgvc":
            return np.asarray(random_flip(random_crop(img, s, rng), rng), dtype=np.uint8)
        box = random_resized_box(img.size[0], img.size[1], rng)
        return np.asarray(random_flip(resized_crop(img, box, s, self.filter), rng), dtype=np.uint8)

    def _fixed(self, img: Image.Image) -> Image.Image:
        s, p = self.img_size, self.preset
        if p == "small":
            return img if img.size == (s, s) else img.resize((s, s), self.filter)
        if p == "spt_vtab":
            return center_crop(resize_short(img, s, self.filter), s)
        return center_crop(resize_short(img, self.resize, self.filter), s)  # fgvc / spt_fgvc evaluation

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (or vtab's float32) (B, H, W, 3) -> normalised float32 (B, 3, H, W).

        Done once per batch, not per image: the uint8 stack moves 4x fewer bytes and the
        layout change and scaling are single vectorised passes.
        """
        out = torch.empty((batch.shape[0], 3, batch.shape[1], batch.shape[2]), dtype=torch.float32)
        out.copy_(batch.permute(0, 3, 1, 2))
        return out.mul_(self.scale).sub_(self.shift)

    def __call__(self, data: Union[bytes, Image.Image], rng: Optional[random.Random] = None) -> torch.Tensor:
        return self.normalize(torch.from_numpy(self.pixels(data, rng).copy())[None])[0]


def build_transform(preset: str, img_size: int, mean: Sequence[float], std: Sequence[float],
                    train: bool) -> ImageTransform:
    """`transform(image_bytes_or_pil, rng)` -> float32 (3, img_size, img_size), normalised."""
    return ImageTransform(preset, img_size, mean, std, train)
