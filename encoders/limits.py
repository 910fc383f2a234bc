"""Limits every decoder enforces before (or while) decoding, from the service's settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    max_pixels: int = 40_000_000  # image/thermal/depth: width x height, checked from the header
    max_side: int = 16_384  # image/thermal/depth: longest side in pixels
    max_audio_seconds: float = 600.0
    max_video_seconds: float = 600.0
    max_video_pixels: int = 4096 * 2160  # one video frame: width x height
    max_imu_samples: int = 100_000  # IMU rows/columns read from .npy/.csv
