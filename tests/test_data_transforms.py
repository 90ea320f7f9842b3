"""Transform presets against the official pipelines, checked with torchvision's own ops on a
real photograph, landscape (640 x 427) and portrait (427 x 640): never square, so a squash
and a short-side resize cannot agree by accident."""
from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from spt_dist.data import build_transform
from spt_dist.data.transforms import random_resized_box

MEAN, STD = (0.1, 0.4, 0.7), (0.2, 0.3, 0.5)  # distinct per channel: a swapped channel shows
ATOL = 1e-4  # float rounding of two ways to normalise; one uint8 step is 1/(255 x 0.2) ~ 0.02
BILINEAR, BICUBIC = InterpolationMode.BILINEAR, InterpolationMode.BICUBIC


def _jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()  # as stored in a shard: JPEG bytes


@pytest.fixture(scope="module", params=["landscape", "portrait"])
def photo(request):
    from sklearn.datasets import load_sample_images

    pixels = load_sample_images().images[0]  # china.jpg, 427 x 640
    if request.param == "portrait":
        pixels = np.ascontiguousarray(pixels.transpose(1, 0, 2))
    return _jpeg(pixels)


def _pil(photo: bytes) -> Image.Image:
    return Image.open(io.BytesIO(photo)).convert("RGB")


def _torchvision(photo: bytes, *steps) -> Image.Image:
    return T.Compose(list(steps))(_pil(photo))


def _check(tf, photo: bytes, expected: Image.Image, seed=None) -> None:
    """Pixels identical to torchvision's; the normalised tensor equal to ToTensor + Normalize."""
    rng = lambda: None if seed is None else random.Random(seed)
    np.testing.assert_array_equal(tf.pixels(photo, rng()), np.asarray(expected))
    want = T.Normalize(MEAN, STD)(T.ToTensor()(expected))
    got = tf(photo, rng())
    assert got.shape == (3, 224, 224) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# TF1's legacy bilinear resize (resize_bilinear, align_corners=False, half_pixel_centers=False),
# from its documented formula: output (y, x) samples the source at (y * in_h / out_h,
# x * in_w / out_w); lower = floor, upper = min(ceil, size - 1), weight = position - floor;
# top = TL + (TR - TL) * wx, bottom = BL + (BR - BL) * wx, out = top + (bottom - top) * wy.
UP_SOURCE = [[0, 100, 50],
             [200, 10, 255]]                 # 2 x 3 -> 3 x 5
# rows sample y = 0, 2/3, 4/3 (-> row 1, clamped); columns x = 0, 0.6, 1.2, 1.8, 2.4 (-> col 2)
# source row 0 along x: 0, 60, 90, 60, 50; row 1: 200, 86, 59, 206, 255; output row 1 = row 0 + 2/3 (row 1 - row 0)
UP_EXPECTED = [[0, 60, 90, 60, 50],
               [400 / 3, 232 / 3, 208 / 3, 472 / 3, 560 / 3],
               [200, 86, 59, 206, 255]]
DOWN_SOURCE = [[10, 20, 30, 40, 50],
               [0, 255, 0, 255, 0],
               [90, 80, 70, 60, 50]]         # 3 x 5 -> 2 x 3
# rows y = 0, 1.5; columns x = 0, 5/3, 10/3. No antialiasing: source row 0 and the columns
# between sample points (and half-pixel centres would sample y = 0.25, 1.75) play no part.
# row 0: 10, 20 + 10 * 2/3, 40 + 10/3; row 1: 0, 255 - 255 * 2/3, 255 - 255/3; row 2: 90, 80 - 20/3, 60 - 10/3
DOWN_EXPECTED = [[10, 80 / 3, 130 / 3],
                 [45, (85 + 220 / 3) / 2, (170 + 170 / 3) / 2]]


@pytest.mark.parametrize("source, expected", [(UP_SOURCE, UP_EXPECTED), (DOWN_SOURCE, DOWN_EXPECTED)],
                         ids=["up", "down"])
def test_tf1_bilinear_resize_follows_tensorflows_formula(source, expected):
    from spt_dist.data.tf_resize import resize_bilinear_tf1

    src = np.array(source, np.uint8)
    rgb = np.stack([src, 255 - src, src[::-1, ::-1]], axis=-1)  # channels resized independently
    h, w = len(expected), len(expected[0])
    out = resize_bilinear_tf1(rgb, h, w)
    assert out.shape == (h, w, 3) and out.dtype == np.float32  # float pixels, never rounded
    want = np.array(expected, np.float64)
    np.testing.assert_allclose(out[..., 0], want, atol=1e-4)
    np.testing.assert_allclose(out[..., 1], 255 - want, atol=1e-4)
    np.testing.assert_allclose(out[..., 2], resize_bilinear_tf1(src[::-1, ::-1, None], h, w)[..., 0], atol=0)
    np.testing.assert_array_equal(resize_bilinear_tf1(rgb, *src.shape), rgb)  # same size: unchanged


def _tf1_pixel(img: np.ndarray, y: int, x: int, out_h: int, out_w: int) -> np.ndarray:
    """One output pixel of TF1's legacy bilinear resize, from the formula, one pixel at a time."""
    def axis(i, n_in, n_out):
        pos = np.float32(i) * (np.float32(n_in) / np.float32(n_out))
        lo = int(np.floor(pos))
        return lo, min(int(np.ceil(pos)), n_in - 1), float(pos - np.floor(pos))

    (y0, y1, wy), (x0, x1, wx) = axis(y, img.shape[0], out_h), axis(x, img.shape[1], out_w)
    f = img.astype(np.float64)
    top = f[y0, x0] + (f[y0, x1] - f[y0, x0]) * wx
    bottom = f[y1, x0] + (f[y1, x1] - f[y1, x0]) * wx
    return top + (bottom - top) * wy


def test_vtab_is_tensorflows_resize_to_224_without_augmentation(photo):
    """VPT's VTAB pipeline: tf.compat.v1 image.resize to 224 x 224, /255, then normalised."""
    source = np.asarray(_pil(photo))
    points = [(y, x) for y in list(range(0, 224, 9)) + [223] for x in list(range(0, 224, 7)) + [223]]
    for train in (True, False):
        tf = build_transform("vtab", 224, MEAN, STD, train=train)
        pixels = tf.pixels(photo)
        assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
        for y, x in points:
            np.testing.assert_allclose(pixels[y, x], _tf1_pixel(source, y, x, 224, 224), atol=1e-3)
        got = tf(photo, random.Random(0))
        want = (torch.from_numpy(pixels).permute(2, 0, 1) / 255.0 - torch.tensor(MEAN)[:, None, None]) \
            / torch.tensor(STD)[:, None, None]
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
        assert torch.equal(got, tf(photo, random.Random(1)))  # rng unused
    # Not PIL's bilinear filter (half-pixel centres, antialiased when shrinking, uint8).
    pil = np.asarray(_pil(photo).resize((224, 224), Image.BILINEAR), np.float32)
    assert np.abs(pixels - pil).mean() > 1.0


def test_vtab_upsamples_small_images_with_tensorflows_resize():
    tiny = np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8)  # VTAB-sized, not square
    pixels = build_transform("vtab", 224, MEAN, STD, train=True).pixels(Image.fromarray(tiny))
    for y, x in ((0, 0), (1, 5), (100, 37), (150, 223), (223, 223), (223, 0)):
        np.testing.assert_allclose(pixels[y, x], _tf1_pixel(tiny, y, x, 224, 224), atol=1e-3)


@pytest.mark.parametrize("preset, resample", [("fgvc", BILINEAR), ("spt_fgvc", BICUBIC)])
def test_fgvc_test_is_short_side_256_then_centre_crop_224(photo, preset, resample):
    expected = _torchvision(photo, T.Resize(256, resample), T.CenterCrop(224))
    _check(build_transform(preset, 224, MEAN, STD, train=False), photo, expected)


def test_fgvc_default_resize_is_torchvision_default(photo):
    # VPT writes tv.transforms.Resize(256) with no interpolation: torchvision's default.
    expected = _torchvision(photo, T.Resize(256), T.CenterCrop(224))
    _check(build_transform("fgvc", 224, MEAN, STD, train=False), photo, expected)


def test_spt_vtab_is_short_side_224_then_centre_crop_for_train_and_test(photo):
    expected = _torchvision(photo, T.Resize(224, BICUBIC), T.CenterCrop(224))
    for train in (True, False):
        tf = build_transform("spt_vtab", 224, MEAN, STD, train=train)
        _check(tf, photo, expected)
        assert torch.equal(tf(photo, random.Random(0)), tf(photo, random.Random(1)))


def test_resize_sizes_follow_vpt_table():
    # src/data/transforms.py of VPT: 224 -> 256, 384 -> 438, 448 -> 512 (then crop).
    for size, resize in ((224, 256), (384, 438), (448, 512)):
        assert build_transform("fgvc", size, MEAN, STD, train=False).resize == resize


def test_fgvc_train_is_random_224_crop_and_flip_of_the_short_side_256_resize(photo):
    resized = _torchvision(photo, T.Resize(256))
    tf = build_transform("fgvc", 224, MEAN, STD, train=True)
    seen = set()
    for seed in range(12):
        out = tf.pixels(photo, random.Random(seed))
        assert out.shape == (224, 224, 3)
        np.testing.assert_array_equal(tf.pixels(photo, random.Random(seed)), out)  # seeded
        match = _find_crop(np.asarray(resized), out)
        assert match is not None, f"seed {seed}: not a 224 crop (or its mirror) of the short-side-256 resize"
        seen.add(match)
    assert {f for _, _, f in seen} == {False, True} and len({(x, y) for x, y, _ in seen}) > 6


def _find_crop(resized: np.ndarray, out: np.ndarray):
    """(x, y, flipped) such that out == resized[y:y+224, x:x+224] (mirrored when flipped), or None."""
    h, w = resized.shape[:2]
    for flipped in (False, True):
        target = out[:, ::-1] if flipped else out
        for y in range(h - 223):
            for x in range(w - 223):
                if np.array_equal(resized[y, x:x + 8], target[0, :8]) and \
                        np.array_equal(resized[y:y + 224, x:x + 224], target):
                    return x, y, flipped
    return None


def test_spt_fgvc_train_is_torchvisions_resized_crop_of_the_sampled_box(photo):
    img = _pil(photo)
    tf = build_transform("spt_fgvc", 224, MEAN, STD, train=True)
    flips, boxes = set(), set()
    for seed in range(8):
        rng = random.Random(seed)
        box = random_resized_box(img.size[0], img.size[1], rng)
        flip = rng.random() < 0.5  # the draw after the box
        expected = F.resized_crop(img, *box, [224, 224], BICUBIC)
        expected = F.hflip(expected) if flip else expected
        _check(tf, photo, expected, seed)
        flips.add(flip)
        boxes.add(box)
    assert flips == {False, True} and len(boxes) == 8


def test_random_resized_box_matches_torchvisions_distribution():
    # Same rule as RandomResizedCrop.get_params: compare the statistics of 4,000 draws each.
    width, height = 640, 427
    img = Image.new("RGB", (width, height))
    rng = random.Random(0)
    ours = [random_resized_box(width, height, rng) for _ in range(4000)]
    torch.manual_seed(0)
    theirs = [T.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(4000)]
    for boxes in (ours, theirs):
        for top, left, h, w in boxes:
            assert 0 <= top <= height - h and 0 <= left <= width - w and h > 0 and w > 0
    stats = lambda boxes: (np.mean([h * w / (width * height) for _, _, h, w in boxes]),
                           np.mean([math.log(w / h) for _, _, h, w in boxes]),
                           np.mean([t + h / 2 for t, _, h, _ in boxes]) / height)
    np.testing.assert_allclose(stats(ours), stats(theirs), atol=0.02)
    # Rounding as torchvision: a tall strip falls back to the centred, ratio-clamped crop.
    assert random_resized_box(10, 1000, random.Random(0), scale=(0.999, 1.0)) == (493, 0, 13, 10)


@pytest.mark.parametrize("preset", ["fgvc", "spt_fgvc"])
def test_training_pipelines_are_seeded_by_the_given_rng_only(photo, preset):
    tf = build_transform(preset, 224, MEAN, STD, train=True)
    random.seed(1)
    torch.manual_seed(1)
    a = tf(photo, random.Random(7))
    random.seed(2)
    torch.manual_seed(2)  # global state must not matter
    assert torch.equal(tf(photo, random.Random(7)), a)
    assert not torch.equal(tf(photo, random.Random(8)), a)
    with pytest.raises(ValueError, match="seeded rng"):
        tf(photo)


def test_small_images_are_upscaled_then_cropped():
    tiny = _jpeg(np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8))  # VTAB-sized
    for preset in ("spt_vtab", "fgvc", "spt_fgvc"):
        for train in (False, True):
            out = build_transform(preset, 224, MEAN, STD, train=train)(tiny, random.Random(0))
            assert out.shape == (3, 224, 224)


def test_normalisation_uses_given_mean_and_std():
    pixels = np.array([[[0, 51, 255]]], np.uint8)  # one pixel, R G B
    image = Image.fromarray(pixels)
    for mean, std in ((MEAN, STD), ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))):
        out = build_transform("small", 1, mean, std, train=False)(image)[:, 0, 0]
        expected = (torch.tensor([0, 51, 255]) / 255.0 - torch.tensor(mean)) / torch.tensor(std)
        torch.testing.assert_close(out, expected.float(), atol=1e-6, rtol=0)
