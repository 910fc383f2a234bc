"""The video path against a reference written here from the original's facts, and its errors.

Fixtures are encoded here with PyAV. Each frame has its own background colour and a block whose
position moves with the frame index, so picking a neighbouring frame changes the output.
"""

from __future__ import annotations

import functools
import io
import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

import encoders.video as video_module
from encoders.clips import clip_timepoints
from encoders.errors import InvalidMedia, MediaError, MediaTooLarge, UnsupportedMediaType
from encoders.limits import MediaLimits
from encoders.video import (
    FrameBudget,
    load_video,
    preprocess_frames,
    sample_frames,
    sampled_indices,
    short_side_scale,
    sniff_video,
    uniform_crop,
)

pytestmark = pytest.mark.unit

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
LIMITS = MediaLimits()
FIELD = "video[0]"


# --- the reference -------------------------------------------------------------------------------


def _source_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps for align_corners=False, no antialias, in PyTorch's float32 arithmetic.

    src = scale * (dst + 0.5) - 0.5 with scale = in/out in float32; PyTorch's compiled kernel rounds
    that expression once (a fused multiply-add), which float64 then one cast to float32 reproduces.
    Rounding it twice moves a weight by one float32 ulp of src (~1.5e-5 at src ~255), visible at 1e-5.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.float64(scale) * (np.arange(out_size) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))  # negative source coordinates clamp to the first pixel
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, np.float32(1) - w1, w1


def _bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize the last two axes of a float32 array."""
    h0, h1, wh0, wh1 = _source_weights(img.shape[-2], out_h)
    c0, c1, ww0, ww1 = _source_weights(img.shape[-1], out_w)
    top, bottom = img[..., h0, :], img[..., h1, :]
    top = top[..., c0] * ww0 + top[..., c1] * ww1
    bottom = bottom[..., c0] * ww0 + bottom[..., c1] * ww1
    return top * wh0[:, None] + bottom * wh1[:, None]


def reference(data: bytes) -> np.ndarray:
    """ImageBind's load_and_transform_video_data over decord, spelled out with a full sequential decode."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]  # presentation order
        fps = float(stream.average_rate)  # decord's get_avg_fps
    n = len(frames)
    duration = n / fps  # EncodedVideoDecord.duration
    max_start = Fraction(max(duration - 2, 0))
    spacing = Fraction(max_start, 4)
    views = []
    for k in range(5):
        start, end = spacing * k, spacing * k + 2
        idx = list(range(math.ceil(fps * float(start)), min(math.ceil(fps * float(end)), n)))
        clip = np.stack([frames[idx[0]], frames[idx[-1]]]).astype(np.float32) / np.float32(255.0)  # T, H, W, C
        clip = clip.transpose(3, 0, 1, 2)  # C, T, H, W
        h, w = clip.shape[2:]
        new_h, new_w = (int(h / w * 224), 224) if w < h else (224, int(w / h * 224))
        clip = _bilinear(clip, new_h, new_w)
        for c in range(3):
            clip[c] = (clip[c] - np.float32(MEAN[c])) / np.float32(STD[c])
        y, x = math.ceil((new_h - 224) / 2), math.ceil((new_w - 224) / 2)
        for idx3 in range(3):
            oy, ox = y, x
            if new_h > new_w:
                oy = {0: 0, 1: y, 2: new_h - 224}[idx3]
            else:
                ox = {0: 0, 1: x, 2: new_w - 224}[idx3]
            views.append(clip[:, :, oy : oy + 224, ox : ox + 224])
    return np.stack(views).astype(np.float32)


# --- fixtures --------------------------------------------------------------------------------------


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return True


def _need(*codecs: str) -> None:
    missing = [c for c in codecs if not _has_encoder(c)]
    if missing:
        pytest.skip(f"PyAV here has no encoder for {', '.join(missing)}")


def _pattern(i: int, w: int, h: int) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = ((i * 37) % 256, (i * 91 + 40) % 256, (255 - i * 23) % 256)
    x, y = (i * 13) % (w - 32), (i * 7) % (h - 32)
    img[y : y + 32, x : x + 32] = 255 - img[y, x]
    return img


# Quick encoder settings that keep B-frames (x264) and hidden alt-ref frames (VP9): the index rule must cope.
FAST = {"libx264": {"preset": "veryfast"}, "libvpx": {"cpu-used": "5"}, "libvpx-vp9": {"cpu-used": "5"}}


@functools.cache
def make_video(
    fmt: str, codec: str, w: int, h: int, fps: Fraction, n: int, audio: str | None = None, gop: int | None = None
) -> bytes:
    _need(codec, *([audio] if audio else []))
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        video = out.add_stream(codec, rate=fps, options=FAST.get(codec, {}))
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        if gop:
            video.codec_context.gop_size = gop  # several keyframes, so the seek path is exercised
        sound = out.add_stream(audio, rate=48000) if audio else None  # streams must all exist before muxing
        for i in range(n):
            out.mux(video.encode(av.VideoFrame.from_ndarray(_pattern(i, w, h), format="rgb24")))
        out.mux(video.encode())
        if sound is not None:
            _add_audio(out, sound, float(n / fps))
    return buf.getvalue()


def _add_audio(out: av.container.OutputContainer, stream: av.AudioStream, seconds: float) -> None:
    step = 960
    for start in range(0, int(seconds * 48000), step):
        tone = (0.3 * np.sin(np.arange(start, start + step) / 7.0)).astype(np.float32)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="flt", layout="mono")
        frame.sample_rate, frame.pts = 48000, start
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def make_audio_only(fmt: str, codec: str) -> bytes:
    _need(codec)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=fmt) as out:
        _add_audio(out, out.add_stream(codec, rate=48000), 1.0)
    return buf.getvalue()


# name: (container, codec, width, height, fps, frames, audio codec, gop)
CASES = {
    "mp4-h264-landscape-7.3s-30fps-gop10": ("mp4", "libx264", 320, 240, Fraction(30), 219, None, 10),
    "mp4-h264-portrait-2s-25fps-aac": ("mp4", "libx264", 240, 320, Fraction(25), 50, "aac", 8),
    "mp4-mpeg4-small-1s-10fps": ("mp4", "mpeg4", 176, 144, Fraction(10), 10, None, None),
    "webm-vp9-portrait-2s-25fps-opus": ("webm", "libvpx-vp9", 240, 320, Fraction(25), 50, "libopus", 8),
    "webm-vp8-square-7.3s-10fps": ("webm", "libvpx", 256, 256, Fraction(10), 73, None, 15),
    "mkv-h264-ntsc-3.3s": ("matroska", "libx264", 320, 240, Fraction(30000, 1001), 100, None, 12),
}


def case(name: str) -> bytes:
    return make_video(*CASES[name])


@functools.cache
def decode_all(data: bytes) -> tuple[list[np.ndarray], float]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], float(stream.average_rate)


# --- sampling arithmetic ---------------------------------------------------------------------------


def test_sniff() -> None:
    assert sniff_video(b"\x00\x00\x00\x20ftypisom\x00") == "MP4"
    assert sniff_video(b"\x00\x00\x00\x14ftypqt  ") == "MP4"
    assert sniff_video(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81") == "WebM/MKV"
    assert sniff_video(b"RIFF\x00\x00\x00\x00AVI ") is None


@pytest.mark.parametrize("duration", [0.5, 1.0, 2.0, 2.0000001, 3.3366666666666664, 7.3, 10.0, 599.9])
def test_clip_timepoints_are_exact_fractions(duration: float) -> None:
    max_start = Fraction(duration - 2) if duration > 2 else Fraction(0)
    expected = [(max_start * k / 4, max_start * k / 4 + 2) for k in range(5)]
    got = clip_timepoints(duration, 5)
    assert got == expected
    assert all(isinstance(t, Fraction) for clip in got for t in clip)
    if duration <= 2:
        assert got == [(0, 2)] * 5


def test_clip_timepoints_ten_seconds() -> None:
    assert clip_timepoints(10.0, 5) == [(Fraction(2 * k), Fraction(2 * k + 2)) for k in range(5)]


@pytest.mark.parametrize(
    ("num_frames", "fps", "expected"),
    [
        (219, 30.0, [0, 59, 40, 99, 80, 139, 120, 179, 159, 218]),  # 7.3 s: starts 0, 1.325, 2.65, 3.975, 5.3 s
        (50, 25.0, [0, 49] * 5),  # exactly 2 s: five identical clips
        (10, 10.0, [0, 9] * 5),  # 1 s: clip ends past the video are cut at N
        (73, 10.0, [0, 19, 14, 33, 27, 46, 40, 59, 53, 72]),
        (1, 30.0, [0, 0] * 5),  # one frame: first and last are the same
    ],
)
def test_sampled_indices_hand_computed(num_frames: int, fps: float, expected: list[int]) -> None:
    assert sampled_indices(num_frames, fps) == expected


@pytest.mark.parametrize(("num_frames", "fps"), [(100, 30000 / 1001), (301, 29.97), (7, 3.0), (1000, 24.0), (61, 30.0)])
def test_sampled_indices_follow_decord_rule(num_frames: int, fps: float) -> None:
    max_start = Fraction(max(num_frames / fps - 2, 0))
    expected = []
    for k in range(5):
        start = max_start * k / 4
        first = math.ceil(fps * float(start))  # float * Fraction is evaluated in floats
        end = min(math.ceil(fps * float(start + 2)), num_frames)
        expected += [first, end - 1]
    assert sampled_indices(num_frames, fps) == expected


def test_a_clip_without_frames_is_refused() -> None:
    # 3 frames at 0.4 fps last 7.5 s: the last clip starts at 5.5 s = frame ceil(2.2) = 3, past the end.
    with pytest.raises(ValueError, match="a clip has no frames"):
        sampled_indices(3, 0.4)


def test_short_side_scale_sizes() -> None:
    for (h, w), size in {
        (240, 320): (224, 298),
        (320, 240): (298, 224),
        (144, 176): (224, 273),
        (256, 256): (224, 224),
    }.items():
        assert short_side_scale(torch.zeros(3, 2, h, w)).shape[2:] == size


@pytest.mark.parametrize(
    ("h", "w", "offsets"),
    [
        (298, 224, [(0, 0), (37, 0), (74, 0)]),  # portrait: along the height
        (224, 298, [(0, 0), (0, 37), (0, 74)]),  # landscape: along the width
        (224, 225, [(0, 0), (0, 1), (0, 1)]),  # ceil of the half
        (224, 224, [(0, 0)] * 3),
    ],
)
def test_uniform_crop_offsets(h: int, w: int, offsets: list[tuple[int, int]]) -> None:
    rows = torch.arange(h, dtype=torch.float32)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32)[None, :].expand(h, w)
    clip = torch.stack([rows, cols])[:, None]  # (2, 1, h, w): channel 0 = row index, 1 = column index
    for idx, (y, x) in enumerate(offsets):
        crop = uniform_crop(clip, idx)
        assert crop.shape == (2, 1, 224, 224)
        assert (crop[0, 0, 0, 0].item(), crop[1, 0, 0, 0].item()) == (y, x)


# --- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_seek_path_returns_the_sequential_frames(name: str) -> None:
    data = case(name)
    frames, fps = decode_all(data)
    n = len(frames)
    sampled = sampled_indices(n, fps)
    rng = np.random.default_rng(len(data))
    picks = [
        sampled,
        list(range(0, n, 2)),  # forwards: mostly decoding on from the previous frame
        list(range(n - 1, -1, -5)),  # backwards: a seek for every frame
        [int(i) for i in rng.integers(0, n, 12)],  # repeats and jumps either way
    ]
    for pick in picks:
        got = sample_frames(data, FIELD, LIMITS, pick=lambda _n, _fps, p=pick: p)
        assert len(got) == len(pick)
        for i, frame in zip(pick, got, strict=True):
            np.testing.assert_array_equal(frame, frames[i], err_msg=f"frame {i}")
    # The fixture is fit for purpose: every sampled frame differs from its neighbours.
    for i in sampled:
        for j in (i - 1, i + 1):
            if 0 <= j < n:
                assert not np.array_equal(frames[i], frames[j])


@pytest.mark.parametrize("name", CASES)
def test_matches_reference(name: str) -> None:
    data = case(name)
    out = load_video(data, FIELD, LIMITS)
    assert out.shape == (15, 3, 2, 224, 224) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference(data), rtol=0, atol=1e-5)


def test_only_the_needed_frames_are_decoded() -> None:
    budget = FrameBudget(FIELD, LIMITS.max_video_frames_per_sample)
    data = case("mp4-h264-landscape-7.3s-30fps-gop10")
    frames = sample_frames(data, FIELD, LIMITS, budget=budget)
    np.testing.assert_allclose(preprocess_frames(frames), reference(data), rtol=0, atol=1e-5)
    assert 10 <= budget.decoded <= 219 // 2  # 10 frames wanted, each at most a GOP (10 frames) past its keyframe


@pytest.mark.parametrize("name", ["mp4-h264-landscape-7.3s-30fps-gop10", "webm-vp9-portrait-2s-25fps-opus"])
def test_sequential_fallback_matches(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """When timestamps cannot place a frame, the whole stream is decoded in order: same result."""

    def give_up(*_args: object) -> dict[int, av.VideoFrame]:
        raise video_module._NeedSequential

    monkeypatch.setattr(video_module, "_seek_decode", give_up)
    data = case(name)
    np.testing.assert_allclose(load_video(data, FIELD, LIMITS), reference(data), rtol=0, atol=1e-5)


def test_audio_track_is_ignored() -> None:
    spec = CASES["mp4-h264-portrait-2s-25fps-aac"]
    with_audio, without = make_video(*spec), make_video(*spec[:6], None, spec[7])
    with av.open(io.BytesIO(with_audio)) as container:
        assert len(container.streams.audio) == 1
    np.testing.assert_array_equal(load_video(with_audio, FIELD, LIMITS), load_video(without, FIELD, LIMITS))


def test_type_comes_from_the_bytes() -> None:
    assert load_video(case("webm-vp8-square-7.3s-10fps"), "clip.mp4", LIMITS).shape == (15, 3, 2, 224, 224)


# --- errors ------------------------------------------------------------------------------------------


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


def _bad(kind: str) -> bytes:
    if kind == "empty":
        return b""
    if kind == "random":
        return np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if kind == "png":
        return _png()
    if kind == "ftyp-garbage":
        return b"\x00\x00\x00\x18ftypisom" + np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if kind == "truncated-mp4":  # the index (moov) is written last, so half a file cannot be opened
        data = case("mp4-h264-landscape-7.3s-30fps-gop10")
        return data[: len(data) // 2]
    if kind == "truncated-webm":  # the header only: no frames
        return case("webm-vp8-square-7.3s-10fps")[:200]
    if kind == "audio-only-mp4":
        return make_audio_only("mp4", "aac")
    if kind == "audio-only-webm":
        return make_audio_only("webm", "libopus")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("empty", InvalidMedia, "empty"),
        ("random", UnsupportedMediaType, "MP4/MOV/M4V, WebM/MKV"),
        ("png", UnsupportedMediaType, "not a video"),
        ("ftyp-garbage", InvalidMedia, "MP4"),
        ("truncated-mp4", InvalidMedia, "MP4"),
        ("truncated-webm", InvalidMedia, "WebM/MKV"),
        ("audio-only-mp4", InvalidMedia, "no video stream"),
        ("audio-only-webm", InvalidMedia, "no video stream"),
    ],
)
def test_bad_files(kind: str, error: type[MediaError], words: str) -> None:
    with pytest.raises(error) as info:
        load_video(_bad(kind), FIELD, LIMITS)
    assert type(info.value) is error
    assert str(info.value).startswith(f"{FIELD}: ") and words in str(info.value)
    assert info.value.field == FIELD


@pytest.mark.parametrize("name", ["mp4-h264-portrait-2s-25fps-aac", "webm-vp9-portrait-2s-25fps-opus"])
def test_too_long(name: str) -> None:
    with pytest.raises(MediaTooLarge, match=r"^video\[0\]: video lasts 2\.0 s, over the limit of 1\.5 s"):
        load_video(case(name), FIELD, MediaLimits(max_video_seconds=1.5))
    assert load_video(case(name), FIELD, MediaLimits(max_video_seconds=2.5)).shape == (15, 3, 2, 224, 224)


@pytest.mark.parametrize("name", ["mp4-mpeg4-small-1s-10fps", "webm-vp8-square-7.3s-10fps"])
def test_frames_too_large(name: str) -> None:
    with pytest.raises(MediaTooLarge, match=r"^video\[0\]: video frames are \d+x\d+ pixels, over the limit of 100$"):
        load_video(case(name), FIELD, MediaLimits(max_video_pixels=100))


@pytest.mark.parametrize("name", CASES)
def test_damaged_files_raise_only_media_errors(name: str) -> None:
    """Truncations and flipped bytes: either a result or InvalidMedia naming the format, never another error."""
    data = case(name)
    rng = np.random.default_rng(7)
    variants = [data[: int(len(data) * f)] for f in (0.3, 0.6, 0.95)]
    for _ in range(5):
        damaged = bytearray(data)
        at = rng.integers(64, len(data), 40)
        damaged[at[0] : at[0] + 16] = rng.integers(0, 256, len(damaged[at[0] : at[0] + 16]), dtype=np.uint8).tobytes()
        for i in at[1:]:
            damaged[i] ^= 0xFF
        variants.append(bytes(damaged))
    fmt = sniff_video(data)
    for variant in variants:
        try:
            out = load_video(variant, FIELD, LIMITS)
        except InvalidMedia as exc:
            assert str(exc).startswith(f"{FIELD}: ")
            assert fmt is not None and fmt in str(exc)
        else:
            assert out.shape == (15, 3, 2, 224, 224) and np.isfinite(out).all()
