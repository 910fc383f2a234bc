"""Video-LLaMA's preprocessing against references written here from its code's facts: the frame
indices, the timestamp sentence, the squash resize and CLIP normalisation, the 8 audio clips of
pytorchvideo 0.1.5 with the in-place mean shift. Video frames are compared with decord 0.6.0 itself,
the library the original decoded with (x86_64 wheels only)."""

from __future__ import annotations

import io
from fractions import Fraction
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from encoders.errors import InvalidMedia
from encoders.limits import MediaLimits
from encoders.videollama.preprocess import (
    frame_indices,
    load_audio,
    load_image,
    load_video,
    timestamp_sentence,
    videollama_audio_clips,
)
from tests.encoders.test_audio import assert_matches, make_signal, pyav_bytes, pyav_decode, reference_clips
from tests.encoders.test_audio import reference_from_waveform as reference_audio
from tests.media import picture, video

pytestmark = pytest.mark.unit

LIMITS = MediaLimits()
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073])  # CLIP's, as blip_processors.py has them
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711])


def reference_normalise(frames: np.ndarray) -> np.ndarray:
    """ToTensorVideo (float / 255, to C, T, H, W), then NormalizeVideo (sub_ mean, div_ std), in torch."""
    clip = torch.from_numpy(np.array(frames)).float() / 255.0  # a copy: Pillow's arrays are read-only
    clip = clip.permute(3, 0, 1, 2)
    return clip.sub_(MEAN[:, None, None, None]).div_(STD[:, None, None, None]).numpy()


@pytest.mark.parametrize("frames", range(1, 301))
def test_frame_indices_are_uniform_and_start_aligned(frames: int) -> None:
    n = min(8, frames)
    expected = np.arange(0, frames, frames / n).astype(int).tolist()
    assert frame_indices(frames) == expected and len(expected) == n


def test_the_timestamp_sentence() -> None:
    assert timestamp_sentence([0, 12, 25], 25.0) == "The video contains 3 frames sampled at 0.0, 0.5, 1.0 seconds. "
    # 40 frames at 20 fps: frame 5 is at 0.25 s, which Python's round takes to the even "0.2".
    indices = frame_indices(40)
    assert indices == [0, 5, 10, 15, 20, 25, 30, 35]
    assert timestamp_sentence(indices, 20.0) == (
        "The video contains 8 frames sampled at 0.0, 0.2, 0.5, 0.8, 1.0, 1.2, 1.5, 1.8 seconds. "
    )
    assert timestamp_sentence([0, 1], 29.97) == "The video contains 2 frames sampled at 0.0, 0.0 seconds. "


@pytest.mark.parametrize("size", [(64, 48), (320, 240), (100, 1000), (1000, 40)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_image_is_squashed_not_cropped(size: tuple[int, int], fmt: str) -> None:
    data = picture(11, size, fmt)
    expected = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    got = load_image(data, "image[0]", LIMITS)
    assert got.shape == (3, 1, 224, 224) and got.dtype == np.float32
    np.testing.assert_array_equal(got, reference_normalise(np.asarray(expected)[None]))


@pytest.mark.parametrize(
    ("size", "seconds", "fps"),
    [((320, 240), 2.3, 10), ((64, 48), 0.5, 10), ((640, 360), 3.7, 25), ((100, 1000), 1.0, 30), ((30, 50), 0.1, 10)],
)
def test_video_frames_equal_decords_bit_for_bit(size: tuple[int, int], seconds: float, fps: int) -> None:
    decord = pytest.importorskip("decord", reason="decord 0.6.0 ships x86_64 wheels only")
    data = video(3, seconds, fps=fps, size=size)
    reader = decord.VideoReader(io.BytesIO(data), height=224, width=224)  # as video_processor.py opened it
    n = min(8, len(reader))
    indices = np.arange(0, len(reader), len(reader) / n).astype(int)
    frames = reader.get_batch(indices).asnumpy()
    times = ", ".join(str(round(int(i) / float(reader.get_avg_fps()), 1)) for i in indices)

    got, sentence = load_video(data, "video[0]", LIMITS)
    np.testing.assert_array_equal(got, reference_normalise(frames))
    assert sentence == f"The video contains {n} frames sampled at {times} seconds. "


@pytest.mark.parametrize("seconds", [0.5, 2.0, 2.1, 7.3, 17.9, 18.0, 30.0])
def test_audio_clips_as_pytorchvideo_0_1_5_placed_them(seconds: float) -> None:
    """Clip i starts at i x (D - 2) / 8: the last stretch is never heard, and clips overlap below 18 s."""
    assert videollama_audio_clips(seconds) == reference_clips(seconds, 8, pytorchvideo="0.1.5")
    if seconds > 2:
        assert videollama_audio_clips(seconds)[-1][1] < Fraction(seconds)


def test_a_videos_audio_track_in_8_clips() -> None:
    rate = 44_100
    data = pyav_bytes("mp4", "aac", make_signal(5.5, rate, 2, seed=9), rate, "libx264", video_seconds=5.5)
    decoded, decoded_rate = pyav_decode(data)
    expected = reference_audio(decoded, decoded_rate, clips=partial(reference_clips, clips=8, pytorchvideo="0.1.5"))
    assert_matches(load_audio(data, "video[0]", LIMITS), expected, clips=8)


def test_a_video_without_an_audio_track_says_so() -> None:
    """The caller falls back to the video alone, as the demo did."""
    with pytest.raises(InvalidMedia, match="has no audio track"):
        load_audio(video(4, 1.0), "video[0]", LIMITS)
