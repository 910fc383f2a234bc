"""Video decoding and preprocessing, exact to ImageBind's `load_and_transform_video_data`.

The original read frames with decord through pytorchvideo's `EncodedVideo` (the audio track was
not used), cut 5 clips of 2 s with `ConstantClipsPerVideoSampler`, kept the first and last frame
of each clip (`UniformTemporalSubsample(2)`), scaled the short side to 224 with bilinear
`F.interpolate`, normalised with CLIP's mean/std and took 3 spatial crops per clip: 15 views of
(3, 2, 224, 224). The same steps are written here with PyAV; only the 10 frames used are decoded
(each from the keyframe before it), never the whole video.
"""

from __future__ import annotations

import bisect
import io
import math
from collections.abc import Callable, Iterator

import av
import av.error
import numpy as np
import torch
import torch.nn.functional as F

from encoders import image
from encoders.clips import clip_timepoints
from encoders.errors import InvalidMedia, MediaTooCostly, MediaTooLarge, UnsupportedMediaType
from encoders.limits import MediaLimits

SIZE = 224
CLIPS_PER_VIDEO = 5
FRAMES_PER_CLIP = 2
NUM_CROPS = 3
CLIP_MEAN = torch.from_numpy(image.CLIP_MEAN)
CLIP_STD = torch.from_numpy(image.CLIP_STD)
ACCEPTED = "MP4/MOV/M4V, WebM/MKV"
# PyAV signals bad input with FFmpegError subclasses; a few paths raise plain ValueError (pixel
# format conversion) or UnicodeDecodeError (metadata). All of them mean "these bytes are bad".
_DECODE_ERRORS = (av.error.FFmpegError, ValueError, UnicodeDecodeError)


def sniff_video(data: bytes) -> str | None:
    """The container from its leading bytes: ISO BMFF has `ftyp` at offset 4, Matroska the EBML magic."""
    if data[4:8] == b"ftyp":
        return "MP4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM/MKV"
    return None


def clip_frame_ranges(num_frames: int, fps: float) -> list[range]:
    """Frame indices of each clip, as EncodedVideoDecord.get_clip chose them.

    `fps * start` multiplies a float by a Fraction, which Python evaluates as floats: kept as is,
    because the ceil of that float is what decord was asked for.
    """
    duration = num_frames / fps
    return [
        range(math.ceil(fps * start), min(math.ceil(fps * end), num_frames))
        for start, end in clip_timepoints(duration, CLIPS_PER_VIDEO)
    ]


def sampled_indices(num_frames: int, fps: float) -> list[int]:
    """UniformTemporalSubsample(2) keeps linspace(0, T-1, 2) = the first and last frame of each clip."""
    out: list[int] = []
    for frames in clip_frame_ranges(num_frames, fps):
        if not frames:
            raise ValueError(f"a clip has no frames ({num_frames} frames at {fps:g} fps)")
        out += [frames[0], frames[-1]]
    return out


def _check_frame_size(width: int, height: int, field: str, limits: MediaLimits) -> None:
    if width * height > limits.max_video_pixels:
        raise MediaTooLarge(
            field, f"video frames are {width}x{height} pixels, over the limit of {limits.max_video_pixels}"
        )
    if width and height:  # 0 x 0: the codec did not say; the decoded frames are checked again
        image.check_aspect_ratio(field, "a video frame", width, height, limits)


class FrameBudget:
    """Frames decoded to reach one sampled frame, at most `limit`: the cost of a sampled frame is the
    frames between it and its keyframe (or the previous sampled frame), which the file chooses."""

    def __init__(self, field: str, limit: int) -> None:
        self.field = field
        self.limit = limit
        self.decoded = 0  # in all, for the tests and the message

    def frames(self, frames: Iterator[av.VideoFrame], sampled: int = 1) -> Iterator[av.VideoFrame]:
        """`frames`, refusing the file once more than `limit` x `sampled` of them were decoded."""
        for n, frame in enumerate(frames, 1):
            self.decoded += 1
            if n > self.limit * sampled:
                raise MediaTooCostly(
                    self.field,
                    f"more than {self.limit} frames must be decoded to reach a sampled frame "
                    "(keyframes too far apart); stopped decoding",
                )
            yield frame


class _NeedSequential(Exception):
    """Timestamps cannot locate a wanted frame; decode the whole stream in order instead."""


def _index(
    container: av.container.InputContainer, stream: av.VideoStream, field: str, limits: MediaLimits
) -> tuple[int, list[int] | None, list[int]]:
    """Demux (never decode) the video packets: their count, their pts sorted, and the keyframes' pts.

    This is decord's frame numbering: it indexes every packet of the stream and sorts by pts, so frame
    i is the i-th smallest pts and the frame count is the packet count. Container frame counts are not
    used: WebM/MKV usually store none. Packets flagged discard (cut by an edit list) never reach the
    screen and are not counted. pts is None when a packet has no pts (then only order can place frames).
    """
    count = 0
    pts: list[int] | None = []
    keys: list[int] = []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:  # the empty packet is demux's end-of-stream marker
            continue
        count += 1
        if count > limits.max_video_frames:  # demuxing stops here: the count is refused, not counted
            raise MediaTooLarge(field, f"the video has more than {limits.max_video_frames} frames, over the limit")
        if packet.pts is None or pts is None:
            pts = None
            continue
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    return count, sorted(pts) if pts is not None else None, sorted(keys)


def _decode_until(frames: Iterator[av.VideoFrame], target: int, budget: FrameBudget) -> av.VideoFrame | None:
    """Decode forward to the frame shown at `target`; None when the stream passes it or ends."""
    for frame in budget.frames(frames):
        if frame.pts is None:
            raise _NeedSequential
        if frame.pts >= target:
            return frame if frame.pts == target else None
    return None


def _seek_decode(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    wanted: list[int],
    keys: list[int],
    budget: FrameBudget,
) -> dict[int, av.VideoFrame]:
    """Decode the frames shown at the `wanted` pts, seeking only when continuing would be slower.

    Targets are visited in order. The decoder keeps going from the last target when no keyframe lies
    between it and the next one (continuing is then no more work than a seek); otherwise it seeks to
    the keyframe at or before the target. A demuxer may land after the target (seeking by dts with
    B-frames), which shows as a first frame past it: then the previous keyframes are tried in turn.
    """
    found: dict[int, av.VideoFrame] = {}
    frames: Iterator[av.VideoFrame] | None = None
    last: int | None = None
    for target in sorted(set(wanted)):
        frame = None
        k = bisect.bisect_right(keys, target)  # keys[:k] are at or before the target
        no_key_between = k == 0 or (last is not None and keys[k - 1] <= last)
        if frames is not None and last is not None and last < target and no_key_between:
            frame = _decode_until(frames, target, budget)
        for key in reversed(keys[max(k - 3, 0) : k]):
            if frame is not None:
                break
            container.seek(key, stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
            frame = _decode_until(frames, target, budget)
        if frame is None:
            raise _NeedSequential
        found[target], last = frame, target
    return found


def _sequential_decode(data: bytes, wanted: list[int], budget: FrameBudget) -> dict[int, av.VideoFrame]:
    """Every frame in presentation order, keeping the wanted indices (the slow, always-right path),
    within the same budget per sampled frame as the seeking path."""
    keep = set(wanted)
    found: dict[int, av.VideoFrame] = {}
    with av.open(io.BytesIO(data), mode="r", metadata_errors="replace") as container:
        frames = budget.frames(container.decode(container.streams.video[0]), sampled=len(keep))
        for i, frame in enumerate(frames):
            if i in keep:
                found[i] = frame
            if len(found) == len(keep):
                break
    return found


def rgb24(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def sample_frames(
    data: bytes,
    field: str,
    limits: MediaLimits,
    pick: Callable[[int, float], list[int]] = sampled_indices,
    budget: FrameBudget | None = None,
    to_array: Callable[[av.VideoFrame], np.ndarray] = rgb24,
) -> list[np.ndarray]:
    """The frames at the indices `pick(num_frames, fps)` chooses, in that order, as `to_array` makes
    them (default: RGB uint8 (H, W, 3)). `budget` (default: `limits.max_video_frames_per_sample`)
    counts the frames decoded."""
    budget = budget or FrameBudget(field, limits.max_video_frames_per_sample)
    if not data:
        raise InvalidMedia(field, "the file is empty")
    fmt = sniff_video(data)
    if fmt is None:
        raise UnsupportedMediaType(field, f"not a video in a supported format ({ACCEPTED})")
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="replace") as container:
            if not container.streams.video:
                raise InvalidMedia(field, f"the {fmt} file has no video stream")
            stream = container.streams.video[0]
            # Metadata first, so an over-long or over-large video is refused before any work.
            if stream.duration and stream.time_base:
                meta_seconds: float | None = float(stream.duration * stream.time_base)
            else:
                meta_seconds = container.duration / av.time_base if container.duration else None
            if meta_seconds is not None and meta_seconds > limits.max_video_seconds:
                raise MediaTooLarge(
                    field, f"video lasts {meta_seconds:.1f} s, over the limit of {limits.max_video_seconds:g} s"
                )
            if stream.codec_context is None:  # PyAV opens no decoder for an unknown codec id
                raise InvalidMedia(field, f"the {fmt} video uses a codec that cannot be decoded")
            _check_frame_size(stream.codec_context.width, stream.codec_context.height, field, limits)
            # The declared rate first: a stream declaring thousands of fps is refused before it is indexed.
            if stream.average_rate and float(stream.average_rate) > limits.max_video_fps:
                raise MediaTooLarge(
                    field,
                    f"video declares {float(stream.average_rate):g} fps, over the limit of {limits.max_video_fps:g}",
                )
            num_frames, pts, keys = _index(container, stream, field, limits)
            # decord's fps is the stream's average frame rate; when the container gives none, the
            # rate that spreads the frames over the stated duration is the same quantity.
            rate = stream.average_rate
            if rate:
                fps = float(rate)
            elif meta_seconds:
                fps = num_frames / meta_seconds
            else:
                fps = 0.0
            if num_frames == 0 or fps <= 0:
                raise InvalidMedia(field, f"the {fmt} video has no frames or no duration")
            # The real rate too: more frames than the declared length allows at the limit.
            real_fps = num_frames / meta_seconds if meta_seconds else fps
            if max(fps, real_fps) > limits.max_video_fps:
                raise MediaTooLarge(
                    field,
                    f"video has {num_frames} frames in {num_frames / max(fps, real_fps):.1f} s, "
                    f"over the limit of {limits.max_video_fps:g} fps",
                )
            if num_frames / fps > limits.max_video_seconds:
                raise MediaTooLarge(
                    field, f"video lasts {num_frames / fps:.1f} s, over the limit of {limits.max_video_seconds:g} s"
                )
            try:
                indices = pick(num_frames, fps)
            except ValueError as exc:
                raise InvalidMedia(field, f"the {fmt} video is too short to sample: {exc}") from exc
            if any(not 0 <= i < num_frames for i in indices):
                raise InvalidMedia(field, f"frame index out of range for a {num_frames}-frame {fmt} video")
            try:
                if pts is None:
                    raise _NeedSequential
                by_pts = _seek_decode(container, stream, [pts[i] for i in indices], keys, budget)
                frames: list[av.VideoFrame] | None = [by_pts[pts[i]] for i in indices]
            except _NeedSequential:
                frames = None
        if frames is None:
            by_index = _sequential_decode(data, indices, budget)
            if len(by_index) < len(set(indices)):
                raise InvalidMedia(field, f"the {fmt} video has fewer decodable frames than packets")
            frames = [by_index[i] for i in indices]
        for frame in frames:
            _check_frame_size(frame.width, frame.height, field, limits)
        return [to_array(frame) for frame in frames]
    except _DECODE_ERRORS as exc:
        raise InvalidMedia(field, f"the {fmt} video is truncated or corrupt ({exc})") from exc


def short_side_scale(clip: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """pytorchvideo's ShortSideScale on (C, T, H, W): floor of the scaled long side, bilinear, no antialias."""
    _, _, h, w = clip.shape
    if w < h:
        new_h, new_w = int(math.floor(h / w * size)), size
    else:
        new_h, new_w = size, int(math.floor(w / h * size))
    return F.interpolate(clip, size=(new_h, new_w), mode="bilinear", align_corners=False)


def uniform_crop(clip: torch.Tensor, spatial_idx: int, size: int = SIZE) -> torch.Tensor:
    """ImageBind's uniform_crop: crops 0/1/2 run along the long side (start, centre, end)."""
    h, w = clip.shape[2], clip.shape[3]
    y_off, x_off = math.ceil((h - size) / 2), math.ceil((w - size) / 2)
    if h > w:
        y_off = {0: 0, 1: y_off, 2: h - size}[spatial_idx]
    else:
        x_off = {0: 0, 1: x_off, 2: w - size}[spatial_idx]
    return clip[:, :, y_off : y_off + size, x_off : x_off + size]


def preprocess_frames(frames: list[np.ndarray]) -> np.ndarray:
    """10 RGB frames (clip-major, first/last) -> float32 (15, 3, 2, 224, 224), clip-major, crops 0, 1, 2."""
    views = []
    for k in range(CLIPS_PER_VIDEO):
        pair = np.stack(frames[k * FRAMES_PER_CLIP : (k + 1) * FRAMES_PER_CLIP])  # (T, H, W, C) as decord gave it
        clip = torch.from_numpy(pair).to(torch.float32).permute(3, 0, 1, 2).contiguous() / 255.0
        clip = short_side_scale(clip)
        clip = (clip - CLIP_MEAN[:, None, None, None]) / CLIP_STD[:, None, None, None]
        views += [uniform_crop(clip, idx) for idx in range(NUM_CROPS)]
    return torch.stack(views).numpy()


def load_video(data: bytes, field: str, limits: MediaLimits) -> np.ndarray:
    frames = sample_frames(data, field, limits)
    if len({frame.shape for frame in frames}) != 1:
        raise InvalidMedia(field, f"the {sniff_video(data)} video changes frame size between the sampled frames")
    return preprocess_frames(frames)
