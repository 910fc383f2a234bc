"""The image path against a reference written here from the original's facts, and its errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from encoders.errors import InvalidMedia, MediaTooLarge, UnsupportedMediaType
from encoders.image import load_image, load_thermal
from encoders.limits import MediaLimits

pytestmark = pytest.mark.unit

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
LIMITS = MediaLimits(max_pixels=40_000_000)


def resize_crop_reference(img: Image.Image) -> np.ndarray:
    """torchvision's Resize(224, BICUBIC) + CenterCrop(224) on a PIL image, spelled out -> float32 HxW[xC]."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(224 * long / short)
    size = (224, new_long) if w <= h else (new_long, 224)
    if size != (w, h):
        img = img.resize(size, Image.BICUBIC)
    w, h = img.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    return np.asarray(img, dtype=np.float32)[top : top + 224, left : left + 224]


def reference(data: bytes) -> np.ndarray:
    """ImageBind's vision transform: + ToTensor + Normalize(CLIP mean, std)."""
    arr = resize_crop_reference(Image.open(io.BytesIO(data)).convert("RGB")) / 255.0
    out = np.empty((3, 224, 224), dtype=np.float32)
    for c in range(3):
        out[c] = (arr[:, :, c] - MEAN[c]) / STD[c]
    return out


def reference_thermal(data: bytes) -> np.ndarray:
    """PandaGPT's thermal transform: grayscale "L", resize, crop, ToTensor; no Normalize."""
    return (resize_crop_reference(Image.open(io.BytesIO(data)).convert("L")) / 255.0)[None]


def encoded(size: tuple[int, int], fmt: str, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("size", "fmt", "mode"),
    [
        ((224, 224), "PNG", "RGB"),
        ((640, 480), "JPEG", "RGB"),
        ((300, 517), "PNG", "RGBA"),
        ((100, 75), "WEBP", "RGB"),  # upscaled
        ((225, 999), "BMP", "RGB"),
        ((401, 333), "TIFF", "L"),
    ],
)
def test_matches_reference(size: tuple[int, int], fmt: str, mode: str) -> None:
    data = encoded(size, fmt, mode)
    out = load_image(data, "image[0]", LIMITS)
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(data), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("size", "fmt", "mode"), [((320, 240), "PNG", "RGB"), ((99, 301), "JPEG", "L")])
def test_thermal_matches_reference(size: tuple[int, int], fmt: str, mode: str) -> None:
    data = encoded(size, fmt, mode)
    out = load_thermal(data, "thermal[0]", LIMITS)
    assert out.shape == (1, 224, 224) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0  # not normalised
    np.testing.assert_allclose(out, reference_thermal(data), rtol=0, atol=1e-6)


def test_solid_colour_normalises_exactly() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (500, 300), (10, 128, 250)).save(buf, format="PNG")
    out = load_image(buf.getvalue(), "image[0]", LIMITS)
    for c, v in enumerate((10, 128, 250)):
        np.testing.assert_allclose(out[c], (v / 255 - MEAN[c]) / STD[c], atol=1e-6)


def test_type_comes_from_the_bytes() -> None:
    assert load_image(encoded((50, 40), "JPEG"), "photo.png", LIMITS).shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", InvalidMedia, "empty"),
        (b"hello, this is text", UnsupportedMediaType, "not an image"),
        (encoded((300, 300), "PNG")[:200], InvalidMedia, "PNG image is truncated or corrupt"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, InvalidMedia, "PNG image is truncated or corrupt"),
        (encoded((64, 64), "JPEG")[:-300], InvalidMedia, "JPEG image is truncated or corrupt"),
        (b"GIF89a" + b"\0" * 100, UnsupportedMediaType, "not an image"),
    ],
)
def test_bad_files_name_the_field_and_problem(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        load_image(data, "image[2]", LIMITS)
    assert str(info.value).startswith("image[2]: ") and words in str(info.value)


def test_a_side_over_the_limit_is_413() -> None:
    with pytest.raises(MediaTooLarge, match=r"image\[0\]: image is 3000x10, a side over the limit of 2048"):
        load_image(encoded((3000, 10), "PNG"), "image[0]", MediaLimits(max_side=2048))


@pytest.mark.parametrize(
    ("size", "words"),
    [
        ((10_000, 5_000), "image is 10000x5000 pixels, over the limit"),  # our limit
        ((20_000, 20_000), "too large to decode"),  # Pillow's own bomb guard, in Image.open
    ],
)
def test_decompression_bomb_is_refused_before_decoding(size: tuple[int, int], words: str) -> None:
    buf = io.BytesIO()
    Image.new("1", size).save(buf, format="PNG")  # a tiny file of many pixels
    with pytest.raises(MediaTooLarge, match=r"image\[0\]: ") as info:
        load_image(buf.getvalue(), "image[0]", LIMITS)
    assert words in str(info.value)
