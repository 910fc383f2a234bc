"""The six modalities: how each file is loaded and which ImageBind branch embeds it.

The order is PandaGPT's order of the media slot sum: image, audio, video, thermal (the
original's four), then depth and IMU, which the original had no loaders for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from encoders.audio import load_audio
from encoders.depth import load_depth
from encoders.image import load_image, load_thermal
from encoders.imu import load_imu
from encoders.limits import MediaLimits
from encoders.video import load_video


@dataclass(frozen=True)
class Modality:
    name: str
    branch: str  # ImageBind's input key
    load: Callable[[bytes, str, MediaLimits], np.ndarray]  # bytes -> the preprocessed array of one file


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("image", "vision", load_image),
        Modality("audio", "audio", load_audio),
        Modality("video", "vision", load_video),
        Modality("thermal", "thermal", load_thermal),
        Modality("depth", "depth", load_depth),
        Modality("imu", "imu", load_imu),
    )
}
