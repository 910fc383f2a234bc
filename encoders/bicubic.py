"""Pillow's bicubic resize along one axis, computed only for a window of the output: the crop first.

The original resized the short side to 224 and then cut the centre 224 x 224 out, so for a 1 x 2048
image it scaled to 224 x 458,752 pixels and kept 224 x 224 of them. Pillow's own `box` argument
cannot crop first exactly (its box is float32, which moves every tap's weight), so the long axis is
done here: Pillow's `precompute_coeffs` (bicubic, a = -0.5, support 2 x the downscale factor), its
8-bit fixed point (22 bits, rounded; the sum starts at half a unit, then shifts and clips) and its
float path (double sums in tap order) - for the wanted output positions only. Each output position
depends on its own taps alone, so those positions equal the full resize's, bit for bit
(tests/encoders/test_image.py compares them with Pillow's resize-then-crop).
"""

from __future__ import annotations

import math

import numpy as np

PRECISION_BITS = 32 - 8 - 2
SUPPORT = 2.0  # bicubic


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic_filter, a = -0.5, in the same operation order."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def coefficients(in_size: int, out_size: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """precompute_coeffs for output positions first..first+count-1 of an in_size -> out_size resize:
    (xmin (count,), taps used (count,), weights (count, ksize) float64, zero past the taps used)."""
    scale = in_size / out_size  # (double)(in1 - in0) / outSize, with in0 = 0 and in1 = in_size exact
    filterscale = max(scale, 1.0)
    support = SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(first, first + count) + 0.5) * scale
    # C's (int) truncates toward zero: negative starts become 0 anyway through the clamp.
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    used = taps[None, :] < xmax[:, None]
    weights = np.where(
        used, _bicubic(((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0
    )
    total = np.zeros(count)
    for t in range(ksize):  # summed in tap order, as the C loop does
        total += weights[:, t]
    weights = np.where(total[:, None] != 0.0, weights / np.where(total == 0.0, 1.0, total)[:, None], weights)
    return xmin, xmax, weights


def _fixed_point(weights: np.ndarray) -> np.ndarray:
    """normalize_coeffs_8bpc: round half away from zero to 22 fractional bits, then C's truncation."""
    scaled = weights * (1 << PRECISION_BITS)
    return np.trunc(np.where(weights < 0, scaled - 0.5, scaled + 0.5)).astype(np.int64)


def resize_window(pixels: np.ndarray, axis: int, out_size: int, first: int, count: int) -> np.ndarray:
    """Resize `pixels` (H, W[, C]; uint8 or float32) along `axis` (0: rows, 1: columns) to out_size,
    returning only output positions first..first+count-1, as Pillow's bicubic pass computes them."""
    in_size = pixels.shape[axis]
    xmin, xmax, weights = coefficients(in_size, out_size, first, count)
    moved = np.moveaxis(pixels, axis, 0)  # the resized axis first
    shape = (count, 1) + (1,) * (moved.ndim - 2)  # weights broadcast over the other axes
    if pixels.dtype == np.uint8:
        kk = _fixed_point(weights)
        acc = np.full((count,) + moved.shape[1:], 1 << (PRECISION_BITS - 1), dtype=np.int64)
        for t in range(weights.shape[1]):
            rows = moved[np.minimum(xmin + t, in_size - 1)]
            acc += rows.astype(np.int64) * kk[:, t].reshape(shape)  # past the taps used, the weight is 0
        out = np.clip(acc >> PRECISION_BITS, 0, 255).astype(np.uint8)
    elif pixels.dtype == np.float32:
        acc64 = np.zeros((count,) + moved.shape[1:], dtype=np.float64)
        for t in range(weights.shape[1]):
            rows = moved[np.minimum(xmin + t, in_size - 1)].astype(np.float64)
            # Only the taps Pillow's loop visits are added (adding 0 * inf would be NaN).
            acc64 += np.where((t < xmax).reshape(shape), rows * weights[:, t].reshape(shape), 0.0)
        out = acc64.astype(np.float32)
    else:
        raise TypeError(f"expected uint8 or float32 pixels, got {pixels.dtype}")
    return np.moveaxis(out, 0, axis)
