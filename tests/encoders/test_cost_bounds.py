"""Files within every size and duration limit whose decoding would still cost far more than they
are worth (issue 14's resource bombs): each is refused with a clear error naming the field before
the costly work, or made cheap, and ordinary files still give the original's results."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

import encoders.arrays as arrays_module
import encoders.audio as audio_module
import encoders.video as video_module
from encoders.audio import load_audio
from encoders.depth import load_depth
from encoders.errors import InvalidMedia, MediaTooCostly, MediaTooLarge
from encoders.image import load_image, load_thermal, resize_and_crop
from encoders.imu import load_imu
from encoders.limits import MediaLimits
from encoders.video import FrameBudget, load_video, sample_frames
from tests.encoders.test_audio import TOLERANCE, make_signal, reference, soundfile_bytes
from tests.encoders.test_image import reference as image_reference
from tests.encoders.test_video import make_video

pytestmark = pytest.mark.unit

LIMITS = MediaLimits()


def png(size: tuple[int, int], mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(0)
    w, h = size
    pixels = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    if mode == "I;16":
        pixels = pixels.astype(np.uint16) * 40
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# --- images: the short side goes to 224 first, so the original scaled a 1 x 2048 image to 224 x 458,752 --


@pytest.fixture
def resized(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of every image Pillow's resize makes."""
    sizes: list[tuple[int, int]] = []
    real = Image.Image.resize

    def recording(self: Image.Image, size: tuple[int, int], *args: object, **kwargs: object) -> Image.Image:
        sizes.append(tuple(size))  # type: ignore[arg-type]
        return real(self, size, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Image.Image, "resize", recording)
    return sizes


@pytest.mark.parametrize(
    ("load", "data", "source"),
    [
        (load_image, png((1, 2048)), (1, 2048)),
        (load_image, png((16_384, 3)), (16_384, 3)),
        (load_image, png((600, 6000)), (600, 6000)),  # both axes shrink: Pillow's rows-first order
        (load_thermal, png((2048, 1), "L"), (2048, 1)),
        (load_depth, png((1, 2048), "I;16"), (1, 2048)),
        (load_depth, npy(np.ones((2, 2048), np.float32)), (2048, 2)),
    ],
    ids=["image-1x2048", "image-16384x3", "image-600x6000", "thermal-2048x1", "depth-png16-1x2048", "npy-2x2048"],
)
def test_an_extreme_aspect_ratio_is_cropped_before_it_is_resized(
    load, data: bytes, source: tuple[int, int], resized: list[tuple[int, int]]
) -> None:  # noqa: ANN001
    out = load(data, "f[0]", LIMITS)
    assert out.shape[-2:] == (224, 224)
    # Nothing larger than the source's long side x 224 is made (the original made 224 x 224 x ratio).
    assert max(w * h for w, h in resized) <= 224 * max(source)


@pytest.mark.parametrize(
    "size", [(1, 512), (512, 1), (3, 1000), (1000, 3), (300, 4000), (4000, 300), (225, 901), (901, 225)]
)
@pytest.mark.parametrize("mode", ["RGB", "L", "F"])
def test_cropping_first_gives_the_original_resize_then_crop_bit_for_bit(size: tuple[int, int], mode: str) -> None:
    w, h = size
    rng = np.random.default_rng(w * h)
    if mode == "F":
        image = Image.fromarray((rng.random((h, w)) * 3).astype(np.float32))
    else:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8))
    original = np.asarray(resize_and_crop(image, crop_first_over=float("inf")))  # resize all, then crop
    np.testing.assert_array_equal(np.asarray(resize_and_crop(image)), original)


def test_a_long_image_matches_the_reference() -> None:
    data = png((2, 700))  # the test_image reference: torchvision's Resize + CenterCrop spelled out
    np.testing.assert_allclose(load_image(data, "image[0]", LIMITS), image_reference(data), rtol=0, atol=1e-6)


# --- audio: only the channels the model uses are resampled; channels and rate are bounded --------------


def many_channels(channels: int, rate: int, seconds: float) -> bytes:
    rng = np.random.default_rng(channels)
    samples = (0.1 * rng.standard_normal((int(rate * seconds), channels))).astype(np.float32)
    return soundfile_bytes(samples, rate, "WAV", "PCM_16")


def test_a_thousand_channels_at_32_hz_is_refused() -> None:
    data = many_channels(1024, 32, 2.0)  # 131 KB; resampled on every channel it was ~66M samples
    with pytest.raises(InvalidMedia, match=r"^audio\[0\]: the sample rate 32 Hz is below the minimum of 4000 Hz"):
        load_audio(data, "audio[0]", LIMITS)
    with pytest.raises(MediaTooLarge, match=r"^audio\[0\]: audio has 1024 channels, over the limit of 16"):
        load_audio(data, "audio[0]", MediaLimits(min_audio_sample_rate=1))


def test_a_rate_over_the_limit_is_refused() -> None:
    with pytest.raises(MediaTooLarge, match=r"sample rate 96000 Hz is over the limit of 48000 Hz"):
        load_audio(many_channels(1, 96_000, 0.1), "audio[0]", MediaLimits(max_audio_sample_rate=48_000))


def test_many_channels_resample_two_rows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Allowed by the settings, 1,024 channels at 32 Hz are cheap: channel 0 and the sum of the
    others are resampled (the fbank reads channel 0; the mean it subtracts is over all channels)."""
    shapes: list[tuple[int, ...]] = []
    real = audio_module.resample

    def recording(waveform: torch.Tensor, orig: int, new: int) -> torch.Tensor:
        shapes.append(tuple(waveform.shape))
        return real(waveform, orig, new)

    monkeypatch.setattr(audio_module, "resample", recording)
    limits = MediaLimits(min_audio_sample_rate=1, max_audio_channels=1024)
    out = load_audio(many_channels(1024, 32, 2.0), "audio[0]", limits)
    assert out.shape == (3, 1, 128, 204) and np.isfinite(out).all()
    assert shapes == [(2, 64)]


@pytest.mark.parametrize(("channels", "rate"), [(6, 22_050), (3, 44_100), (8, 16_000)])
def test_many_channels_still_match_the_original(channels: int, rate: int) -> None:
    """The reference resamples every channel and takes the mean over all of them (float64)."""
    data = soundfile_bytes(make_signal(2.5, rate, channels, seed=channels), rate, "WAV", "PCM_16")
    np.testing.assert_allclose(load_audio(data, "audio[0]", LIMITS), reference(data), atol=TOLERANCE, rtol=0)


# --- video: frame count, frame rate, frames decoded per sampled frame, frame shape ---------------------


def test_a_tall_thin_video_is_refused() -> None:
    data = make_video("mp4", "libx264", 16, 2048, Fraction(10), 10)
    with pytest.raises(MediaTooLarge, match=r"^video\[0\]: a video frame is 16x2048, an aspect ratio over the limit"):
        load_video(data, "video[0]", LIMITS)


def test_a_high_declared_frame_rate_is_refused_before_indexing(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_args: object) -> None:
        raise AssertionError("the stream was indexed")

    monkeypatch.setattr(video_module, "_index", never)
    data = make_video("mp4", "libx264", 64, 48, Fraction(1000), 40)
    with pytest.raises(MediaTooLarge, match=r"^video\[0\]: video declares 1000 fps, over the limit of 240"):
        load_video(data, "video[0]", LIMITS)


def test_too_many_frames_stop_the_index() -> None:
    data = make_video("mp4", "libx264", 64, 48, Fraction(30), 219)
    with pytest.raises(MediaTooLarge, match=r"^video\[0\]: the video has more than 100 frames"):
        load_video(data, "video[0]", MediaLimits(max_video_frames=100))


def one_keyframe(frames: int) -> bytes:
    """One keyframe, then only predicted frames: every sampled frame is decoded from frame 0."""
    return make_video("mp4", "libx264", 64, 48, Fraction(30), frames, None, 100_000)


def test_frames_decoded_per_sampled_frame_are_bounded() -> None:
    data = one_keyframe(300)  # 10 s: the 2nd sampled frame (index 59) is 59 frames past the keyframe
    budget = FrameBudget("video[0]", 20)
    with pytest.raises(MediaTooCostly, match=r"^video\[0\]: more than 20 frames must be decoded to reach a sampled"):
        sample_frames(data, "video[0]", MediaLimits(max_video_frames_per_sample=20), budget=budget)
    assert budget.decoded <= 22  # the first sampled frame, then 21: stopped, not decoded to the end
    assert load_video(data, "video[0]", LIMITS).shape == (15, 3, 2, 224, 224)  # within the default


def test_the_sequential_path_has_the_same_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    def give_up(*_args: object) -> None:
        raise video_module._NeedSequential

    monkeypatch.setattr(video_module, "_seek_decode", give_up)
    budget = FrameBudget("video[0]", 5)
    with pytest.raises(MediaTooCostly, match="more than 5 frames must be decoded"):
        sample_frames(one_keyframe(300), "video[0]", MediaLimits(), budget=budget)
    assert budget.decoded == 5 * 10 + 1  # 10 sampled frames' worth, then stopped


# --- IMU CSV: line length and count measured before any line is parsed ---------------------------------


@pytest.fixture
def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(_line: str) -> bool:
        raise AssertionError("a line was parsed")

    monkeypatch.setattr(arrays_module, "_is_numeric_row", never)


def test_one_long_csv_row_is_refused_unparsed(no_parsing: None) -> None:
    row = ",".join(["1.5"] * (5 * 2**20)).encode()  # one 20 MiB row
    with pytest.raises(MediaTooLarge, match=r"^imu\[0\]: the CSV has a line of 20971519 bytes, over the limit of 4096"):
        load_imu(row + b"\n", "imu[0]", LIMITS)


def test_millions_of_empty_lines_are_refused_unparsed(no_parsing: None) -> None:
    with pytest.raises(MediaTooLarge, match=r"^imu\[0\]: the CSV has 3000000 lines, over the limit of 200001"):
        load_imu(b"\n" * 3_000_000, "imu[0]", LIMITS)


def test_an_ordinary_csv_still_loads() -> None:
    rows = "ax,ay,az,gx,gy,gz\r\n" + "0.1,0.2,9.8,0.01,0.02,0.03\r\n" * 2500
    out = load_imu(rows.encode(), "imu[0]", LIMITS)
    assert out.shape == (6, 2000)
    np.testing.assert_allclose(out[:, 0], [0.1, 0.2, 9.8, 0.01, 0.02, 0.03], rtol=1e-6)
