"""Limits every decoder enforces before (or while) decoding, from the service's settings.

Each bounds the cost of the work before it is done: a file within every limit decodes in bounded
time and memory (the pool adds a deadline and a memory cap per decode on top, `pool.Batching`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    max_pixels: int = 40_000_000  # image/thermal/depth: width x height, checked from the header
    max_side: int = 16_384  # image/thermal/depth: longest side in pixels
    # Video frames: long side / short side. The short side is scaled to 224 before the crops, so a
    # 16 x 2048 frame would become 224 x 28,672 pixels first. (Images need no such limit: they are
    # cropped first, see image.resize_and_crop.)
    max_aspect_ratio: float = 50.0
    max_audio_seconds: float = 600.0
    max_audio_channels: int = 16
    min_audio_sample_rate: int = 4_000  # below it, resampling to 16 kHz multiplies the samples
    max_audio_sample_rate: int = 384_000
    max_video_seconds: float = 600.0
    max_video_pixels: int = 4096 * 2160  # one video frame: width x height
    max_video_frames: int = 60_000  # frames (packets) in the video stream
    max_video_fps: float = 240.0  # the declared frame rate and the real one (frames / duration)
    # Frames decoded to reach one sampled frame (from its keyframe, or from the previous sampled
    # frame): a stream of one keyframe and thousands of frames after it is refused, not decoded.
    max_video_frames_per_sample: int = 1_000
    max_imu_samples: int = 100_000  # IMU rows/columns read from .npy/.csv
    max_csv_line_bytes: int = 4_096  # one IMU CSV line, checked before any line is parsed
