"""Depth maps -> the single-channel disparity (1, 224, 224) ImageBind's depth branch takes.

The original published no depth loader; ImageBind's depth encoder was trained on disparity.
Our rule (README, fidelity section):
- metric depth: a 16-bit PNG/TIFF holds millimetres (the Kinect / RealSense / SUN RGB-D
  convention); a float TIFF or float .npy holds metres; an integer .npy holds millimetres.
  disparity = 1 / depth in metres (1/m); pixels with no valid depth (0, negative, NaN, inf) get 0.
- an 8-bit image (grayscale or colour) is taken as a disparity map already: value / 255.
Then, as thermal: short side to 224 with bicubic, centre crop 224, no normalisation.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from encoders.arrays import is_npy, read_npy
from encoders.errors import InvalidMedia, MediaTooLarge
from encoders.image import decode_image, resize_and_crop
from encoders.limits import MediaLimits

MILLIMETRES_PER_METRE = 1000.0


def disparity_from_depth(depth_m: np.ndarray) -> np.ndarray:
    valid = np.isfinite(depth_m) & (depth_m > 0)
    disparity = np.zeros(depth_m.shape, dtype=np.float32)
    disparity[valid] = 1.0 / depth_m[valid]
    return disparity


def depth_array(data: bytes, field: str, limits: MediaLimits) -> np.ndarray:
    """The upload as a float32 (H, W) disparity map."""
    if is_npy(data):
        array = read_npy(data, field, limits.max_pixels)
        array = array.squeeze()
        if array.ndim != 2 or min(array.shape) < 1:
            raise InvalidMedia(field, f"a depth array must be 2-D (H, W), got shape {array.shape}")
        if max(array.shape) > limits.max_side:
            raise MediaTooLarge(field, f"the depth map is {array.shape}, a side over the limit of {limits.max_side}")
        scale = MILLIMETRES_PER_METRE if np.issubdtype(array.dtype, np.integer) else 1.0
        return disparity_from_depth(array.astype(np.float64) / scale)
    image = decode_image(data, field, limits, mode=None)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return disparity_from_depth(np.asarray(image, dtype=np.float64) / MILLIMETRES_PER_METRE)
    if image.mode == "F":
        return disparity_from_depth(np.asarray(image, dtype=np.float64))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def load_depth(data: bytes, field: str, limits: MediaLimits) -> np.ndarray:
    disparity = depth_array(data, field, limits)
    cropped = resize_and_crop(Image.fromarray(disparity, mode="F"))
    return np.asarray(cropped, dtype=np.float32)[None].copy()
