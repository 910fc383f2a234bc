"""Deterministic media of every modality, generated (nothing is downloaded).

`make(modality, seed, nonce)` returns a small valid file. The same (seed, nonce) always gives the
same bytes; another nonce gives other bytes of the same size and shape. The server's embedding
cache is keyed by the sha256 of the bytes, so a fresh nonce per request is a guaranteed miss
("cold") and sending the same bytes again can hit ("warm"). Sizes are those of a phone upload
scaled down: the 2-core CPU box must still be able to generate hundreds of them in seconds.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from fractions import Fraction
from typing import cast

import av
import numpy as np
import soundfile as sf
from PIL import Image

IMAGE_SIZE = (320, 240)
AUDIO_SECONDS, AUDIO_RATE = 3.0, 16_000
VIDEO_SECONDS, VIDEO_FPS = 3.0, 10
IMU_SAMPLES = 2000


def _rng(seed: int, nonce: int) -> np.random.Generator:
    # A SeedSequence of both: every (seed, nonce) pair is its own stream.
    return np.random.default_rng([seed, nonce])


def _picture(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """A gradient with a coloured box: structure, not just noise (PNG/JPEG sizes stay realistic)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 // w, yy * 255 // h, np.full((h, w), rng.integers(0, 256))], -1).astype(np.uint8)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)
    return arr


def _save(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def image(seed: int, nonce: int) -> bytes:
    return _save(Image.fromarray(_picture(_rng(seed, nonce), IMAGE_SIZE)), "JPEG")


def thermal(seed: int, nonce: int) -> bytes:
    return _save(Image.fromarray(_picture(_rng(seed, nonce), IMAGE_SIZE[::-1])).convert("L"), "PNG")


def depth(seed: int, nonce: int) -> bytes:
    """16-bit PNG in millimetres: a tilted plane with noise."""
    rng = _rng(seed, nonce)
    w, h = IMAGE_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    mm = (800 + 10 * xx + 4 * yy + rng.integers(0, 40, (h, w))).astype(np.uint16)
    return _save(Image.fromarray(mm), "PNG")


def imu(seed: int, nonce: int) -> bytes:
    """(N, 6) float32 .npy: accelerometer with gravity on z, gyroscope, a little noise."""
    rng = _rng(seed, nonce)
    t = np.arange(IMU_SAMPLES)[:, None] / 200.0
    data = np.sin(t * rng.uniform(0.5, 5, 6)) + np.array([0, 0, 9.81, 0, 0, 0])
    data += 0.05 * rng.standard_normal(data.shape)
    buf = io.BytesIO()
    np.save(buf, data.astype(np.float32))
    return buf.getvalue()


def audio(seed: int, nonce: int) -> bytes:
    """16-bit mono WAV at 16 kHz: a few harmonics under an envelope, plus noise."""
    rng = _rng(seed, nonce)
    t = np.arange(int(AUDIO_SECONDS * AUDIO_RATE)) / AUDIO_RATE
    f0 = rng.uniform(120, 400)
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5)) * (0.5 + 0.5 * np.sin(3 * np.pi * t))
    wave = 0.3 * wave + 0.01 * rng.standard_normal(t.shape)
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), AUDIO_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


@functools.lru_cache(maxsize=1024)
def video(seed: int, nonce: int) -> bytes:
    """H.264 MP4: a moving box whose colour changes every frame. Encoded once per process: x264 as PyAV
    18 bundles it does not give the same bytes twice (measured: 7 of 80 seeds differed between two
    encodes, even single-threaded from the same YUV input), and the same (seed, nonce) must repeat."""
    return moving_box_video(_rng(seed, nonce), VIDEO_SECONDS, VIDEO_FPS, IMAGE_SIZE)


def moving_box_video(
    rng: np.random.Generator, seconds: float, fps: int, size: tuple[int, int], container: str = "mp4"
) -> bytes:
    """A moving box whose colour changes every frame (so a wrongly chosen frame shows); H.264 in
    MP4 or VP8 in WebM. tests/media.py makes its videos with it too."""
    w, h = size
    codec = {"mp4": "libx264", "webm": "libvpx"}[container]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = cast(av.VideoStream, out.add_stream(codec, rate=fps))  # the codec names a video stream
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = Fraction(1, fps)
        base = rng.integers(0, 256, 3)
        for i in range(int(round(seconds * fps))):
            frame = np.empty((h, w, 3), np.uint8)
            frame[:] = (base + 7 * i) % 256
            x = (i * 9) % max(w - w // 4, 1)
            frame[h // 4 : h // 2, x : x + w // 4] = (255 - base) % 256
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


GENERATORS: dict[str, Callable[[int, int], bytes]] = {
    "image": image,
    "audio": audio,
    "video": video,
    "thermal": thermal,
    "depth": depth,
    "imu": imu,
}


def make(modality: str, seed: int, nonce: int) -> bytes:
    """One valid file of `modality`; a new `nonce` changes its bytes (a cache miss), the same one repeats them."""
    return GENERATORS[modality](seed, nonce)
