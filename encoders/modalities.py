"""The six modalities, the one registry of them: how each file is loaded, which ImageBind branch
embeds it, and what files it accepts (the API's upload fields and their descriptions come from here).
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
    accepts: str  # the formats, for people


MODALITIES: dict[str, Modality] = {
    m.name: m
    for m in (
        Modality("image", "vision", load_image, "PNG, JPEG, WebP, BMP or TIFF"),
        Modality("audio", "audio", load_audio, "WAV, FLAC, OGG, MP3, M4A, WebM, or a video's audio track"),
        Modality("video", "vision", load_video, "MP4, MOV, WebM or MKV (frames only)"),
        Modality("thermal", "thermal", load_thermal, "a thermal image in any image format"),
        Modality("depth", "depth", load_depth, "16-bit PNG (mm), .npy (m or mm), or 8-bit disparity"),
        Modality("imu", "imu", load_imu, ".npy or CSV, 6 channels: accelerometer xyz, gyroscope xyz"),
    )
}
