"""Valid media files of every modality, generated deterministically (nothing is downloaded)."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import soundfile as sf
from PIL import Image

from benchmarks.media import moving_box_video


def picture(seed: int, size: tuple[int, int], fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A gradient with a coloured box: structure, not just noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // w), (yy * 255 // h), np.full((h, w), rng.integers(0, 256))], -1).astype(np.uint8)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def depth_png16(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """Millimetres, a tilted plane with noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    mm = (800 + 10 * xx + 4 * yy + rng.integers(0, 40, (h, w))).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(mm).save(buf, format="PNG")
    return buf.getvalue()


def imu_npy(seed: int, samples: int = 2000) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(samples)[:, None] / 200.0
    data = (
        np.sin(t * rng.uniform(0.5, 5, 6)) + np.array([0, 0, 9.81, 0, 0, 0]) + 0.05 * rng.standard_normal((samples, 6))
    )
    buf = io.BytesIO()
    np.save(buf, data.astype(np.float32))
    return buf.getvalue()


def tone(seed: int, seconds: float, rate: int = 16_000, channels: int = 1) -> np.ndarray:
    """(N, channels) float: a few harmonics under an envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(120, 400)
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5)) * (0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t))
    out = np.stack([wave * (0.3 - 0.1 * c) for c in range(channels)], axis=1)
    return (out + 0.01 * rng.standard_normal(out.shape)).astype(np.float32)


def wav(seed: int, seconds: float, rate: int = 16_000, channels: int = 1, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seed, seconds, rate, channels), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def video(
    seed: int, seconds: float, fps: int = 10, size: tuple[int, int] = (320, 240), container: str = "mp4"
) -> bytes:
    """A moving box whose colour changes every frame, so a wrongly chosen frame shows."""
    return moving_box_video(np.random.default_rng(seed), seconds, fps, size, container)


def valid(modality: str, seed: int) -> bytes:
    """One small valid file of each modality."""
    return {
        "image": lambda: picture(seed, (320, 240), "JPEG" if seed % 2 else "PNG"),
        "audio": lambda: wav(seed, 1.0 + seed % 4),
        "video": lambda: video(seed, 1.0 + seed % 3),
        "thermal": lambda: picture(seed, (240, 320), "PNG", mode="L"),
        "depth": lambda: depth_png16(seed),
        "imu": lambda: imu_npy(seed, 1500 + 300 * (seed % 4)),
    }[modality]()


# Files at and past the limits (tests/hostile.py's corpus, tests/service/test_bad_inputs.py).


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def wav_samples(n: int, rate: int = 16_000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(n, np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wav_channels(channels: int, rate: int, frames: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros((frames, channels), np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def one_keyframe_video(fps: int, seconds: float) -> bytes:
    """One keyframe, then thousands of predicted frames: each sampled frame lies hundreds of frames
    past the previous one, over the server's PANDASERVE_MAX_VIDEO_FRAMES_PER_SAMPLE."""
    from tests.encoders.test_video import make_video  # here: that module imports torch and the encoders

    return make_video("mp4", "libx264", 64, 48, Fraction(fps), int(fps * seconds), None, 100_000)


def csv_rows(rows: int) -> bytes:
    return ("ax,ay,az,gx,gy,gz\n" + "0.1,0.2,9.8,0,0,0\n" * rows).encode()
