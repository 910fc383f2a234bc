"""Depth: our documented metric-depth -> disparity rule, against a reference written here."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from encoders.depth import load_depth
from encoders.errors import InvalidMedia, MediaTooLarge, UnsupportedMediaType
from encoders.limits import MediaLimits
from tests.encoders.test_image import resize_crop_reference

pytestmark = pytest.mark.unit

LIMITS = MediaLimits()


def reference(data: bytes) -> np.ndarray:
    """16-bit image: millimetres; float .npy: metres; int .npy: millimetres; 8-bit image: disparity/255."""
    if data.startswith(b"\x93NUMPY"):
        arr = np.load(io.BytesIO(data)).squeeze()
        metres = arr / 1000.0 if arr.dtype.kind in "iu" else arr.astype(np.float64)
    else:
        img = Image.open(io.BytesIO(data))
        if img.mode.startswith("I;16") or img.mode == "I":
            metres = np.asarray(img, dtype=np.float64) / 1000.0
        else:
            disparity = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            return resize_crop_reference(Image.fromarray(disparity, mode="F"))[None]
    disparity = np.where(np.isfinite(metres) & (metres > 0), 1.0 / np.where(metres > 0, metres, 1.0), 0.0)
    return resize_crop_reference(Image.fromarray(disparity.astype(np.float32), mode="F"))[None]


def depth_mm(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    mm = 500 + 20 * xx + 5 * yy + rng.integers(0, 50, (h, w))
    mm[rng.random((h, w)) < 0.05] = 0  # holes: no depth
    return mm.astype(np.uint16)


def png16(mm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mm).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        png16(depth_mm(240, 320)),
        png16(depth_mm(480, 270, seed=1)),
        npy(depth_mm(200, 200, seed=2)),
        npy(depth_mm(300, 400, seed=3).astype(np.float32) / 1000.0),
        npy((depth_mm(120, 160, seed=4).astype(np.float64) / 1000.0)[None]),
    ],
    ids=["png16-landscape", "png16-portrait", "npy-uint16", "npy-float32-metres", "npy-float64-1xHxW"],
)
def test_matches_reference(data: bytes) -> None:
    out = load_depth(data, "depth[0]", LIMITS)
    assert out.shape == (1, 224, 224) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(data), rtol=1e-6, atol=1e-6)


def test_two_metres_is_half_a_disparity_everywhere() -> None:
    out = load_depth(npy(np.full((100, 150), 2.0, np.float32)), "depth[0]", LIMITS)
    np.testing.assert_allclose(out, 0.5, rtol=1e-6)


def test_eight_bit_images_are_disparity_maps() -> None:
    buf = io.BytesIO()
    Image.new("L", (300, 224), 51).save(buf, format="PNG")
    np.testing.assert_allclose(load_depth(buf.getvalue(), "depth[0]", LIMITS), 0.2, rtol=1e-6)


def test_invalid_depth_gives_zero_disparity() -> None:
    arr = np.full((224, 224), np.nan, np.float32)
    np.testing.assert_array_equal(load_depth(npy(arr), "depth[0]", LIMITS), 0.0)


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", InvalidMedia, "empty"),
        (b"just text", UnsupportedMediaType, "not an image"),
        (npy(np.zeros((2, 3, 4))), InvalidMedia, "must be 2-D"),
        (npy(np.array(["a", "b"])), InvalidMedia, "numeric"),
        (npy(depth_mm(50, 60))[:100], InvalidMedia, "truncated or corrupt"),
        (npy(np.zeros((10, 5000), np.float32)), MediaTooLarge, "a side over the limit"),
    ],
)
def test_bad_depth_files(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error) as info:
        load_depth(data, "depth[0]", MediaLimits(max_side=4096))
    assert str(info.value).startswith("depth[0]: ") and words in str(info.value)
