"""Transform presets against the VPT protocol, checked with torchvision on a real photograph."""
from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from spt_dist.data import build_transform

MEAN, STD = (0.1, 0.4, 0.7), (0.2, 0.3, 0.5)  # distinct per channel: a swapped channel shows
ATOL = 1e-4  # float rounding of two ways to normalise; one uint8 step is 1/(255 x 0.2) ~ 0.02


@pytest.fixture(scope="module")
def photo():
    from sklearn.datasets import load_sample_images

    pixels = load_sample_images().images[0]  # china.jpg, 427 x 640
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()  # as stored in a shard: JPEG bytes


def _torchvision(photo: bytes, *steps) -> torch.Tensor:
    pipeline = T.Compose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])
    return pipeline(Image.open(io.BytesIO(photo)).convert("RGB"))


def test_vtab_resize_224_no_augmentation(photo):
    expected = _torchvision(photo, T.Resize((224, 224), InterpolationMode.BICUBIC))
    for train in (True, False):
        tf = build_transform("vtab", 224, MEAN, STD, train=train)
        outs = [tf(photo, random.Random(seed)) for seed in (0, 1)]
        assert outs[0].shape == (3, 224, 224) and outs[0].dtype == torch.float32
        assert torch.equal(outs[0], outs[1])  # the rng is not used: no augmentation
        torch.testing.assert_close(outs[0], expected, atol=ATOL, rtol=0)


def test_fgvc_test_resize_256_centre_crop_224(photo):
    expected = _torchvision(photo, T.Resize((256, 256), InterpolationMode.BICUBIC), T.CenterCrop(224))
    out = build_transform("fgvc", 224, MEAN, STD, train=False)(photo)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_fgvc_train_random_224_crop_and_flip_of_256(photo):
    resized = _torchvision(photo, T.Resize((256, 256), InterpolationMode.BICUBIC))
    tf = build_transform("fgvc", 224, MEAN, STD, train=True)
    seen = set()
    for seed in range(12):
        out = tf(photo, random.Random(seed))
        assert out.shape == (3, 224, 224)
        torch.testing.assert_close(tf(photo, random.Random(seed)), out, atol=0, rtol=0)  # seeded
        match = _find_crop(resized, out)
        assert match is not None, f"seed {seed}: output is not a 224 crop (or its mirror) of the 256 resize"
        seen.add(match)
    flips = {f for _, _, f in seen}
    assert flips == {False, True} and len({(x, y) for x, y, _ in seen}) > 6  # random offsets, both flips


def _find_crop(resized: torch.Tensor, out: torch.Tensor):
    """(x, y, flipped) such that out == crop(resized, x, y, 224) (mirrored when flipped), or None."""
    windows = resized[:, :38, :38].unfold(1, 6, 1).unfold(2, 6, 1)  # (3, 33, 33, 6, 6): every 6x6 corner
    for flipped in (False, True):
        target = out.flip(-1) if flipped else out
        corner_diff = (windows - target[:, None, None, :6, :6]).abs().amax(dim=(0, 3, 4))
        for y, x in (corner_diff <= ATOL).nonzero().tolist():
            if torch.allclose(resized[:, y:y + 224, x:x + 224], target, atol=ATOL, rtol=0):
                return x, y, flipped
    return None


def test_normalisation_uses_given_mean_and_std():
    pixels = np.array([[[0, 51, 255]]], np.uint8)  # one pixel, R G B
    image = Image.fromarray(pixels)
    for mean, std in ((MEAN, STD), ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))):
        out = build_transform("small", 1, mean, std, train=False)(image)[:, 0, 0]
        expected = (torch.tensor([0, 51, 255]) / 255.0 - torch.tensor(mean)) / torch.tensor(std)
        torch.testing.assert_close(out, expected.float(), atol=1e-6, rtol=0)
