"""Transform presets: decoded image -> normalised float32 tensor (3, H, W).

- vtab:  resize to img_size x img_size, no augmentation (VPT's VTAB protocol).
- fgvc:  train: resize to r x r, r = round(256 / 224 * img_size), random img_size crop,
         horizontal flip; test: resize r x r, centre crop (VPT's FGVC protocol).
- small: resize to img_size x img_size (bilinear), no augmentation (28 px demos).

Training randomness comes from a `random.Random` seeded by the caller per sample (see
loader.sample_seed), never from global state, so a resumed epoch is bit-identical.
"""
from __future__ import annotations

import io
import random
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .index import DataError
from ..config.schema import PRESETS


def decode_image(data: bytes, draft: Optional[int] = None) -> Image.Image:
    """RGB image; JPEGs much larger than `draft` px are decoded at a reduced DCT scale."""
    img = Image.open(io.BytesIO(data))
    if draft and img.format == "JPEG":
        img.draft("RGB", (draft, draft))  # keeps both sides >= draft: resize still sees enough pixels
    return img.convert("RGB")


class ImageTransform:
    def __init__(self, preset: str, img_size: int, mean: Sequence[float], std: Sequence[float], train: bool):
        if preset not in PRESETS:
            raise DataError(f"data.preset '{preset}' is not allowed; allowed: {', '.join(PRESETS)}")
        if len(mean) != 3 or len(std) != 3:
            raise DataError(f"mean/std need 3 values (RGB), got {list(mean)} / {list(std)}")
        self.preset, self.img_size, self.train = preset, img_size, train
        self.resize = round(256 / 224 * img_size) if preset == "fgvc" else img_size
        self.filter = Image.BILINEAR if preset == "small" else Image.BICUBIC
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std_t

    def pixels(self, data: Union[bytes, Image.Image], rng: Optional[random.Random] = None) -> np.ndarray:
        """Decoded, resized (and for fgvc cropped) image as uint8 (H, W, 3)."""
        img = data.convert("RGB") if isinstance(data, Image.Image) else decode_image(data, draft=self.resize)
        if img.size != (self.resize, self.resize):
            img = img.resize((self.resize, self.resize), self.filter)
        if self.preset == "fgvc":
            img = self._crop(img, rng)
        return np.asarray(img, dtype=np.uint8)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> normalised float32 (B, 3, H, W).

        Done once per batch, not per image: the uint8 stack moves 4x fewer bytes and the
        layout change and scaling are single vectorised passes.
        """
        out = torch.empty((batch.shape[0], 3, batch.shape[1], batch.shape[2]), dtype=torch.float32)
        out.copy_(batch.permute(0, 3, 1, 2))
        return out.mul_(self.scale).sub_(self.shift)

    def __call__(self, data: Union[bytes, Image.Image], rng: Optional[random.Random] = None) -> torch.Tensor:
        return self.normalize(torch.from_numpy(self.pixels(data, rng).copy())[None])[0]

    def _crop(self, img: Image.Image, rng: Optional[random.Random]) -> Image.Image:
        s, r = self.img_size, self.resize
        if self.train:
            if rng is None:
                raise ValueError("fgvc training transform needs a seeded rng")
            x, y = rng.randint(0, r - s), rng.randint(0, r - s)
            img = img.crop((x, y, x + s, y + s))
            return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img
        x = y = int(round((r - s) / 2.0))
        return img.crop((x, y, x + s, y + s))


def build_transform(preset: str, img_size: int, mean: Sequence[float], std: Sequence[float],
                    train: bool) -> ImageTransform:
    """`transform(image_bytes_or_pil, rng)` -> float32 (3, img_size, img_size), normalised."""
    return ImageTransform(preset, img_size, mean, std, train)
