"""Video-LLaMA's preprocessing, as its demo ran it (upstream's `Chat.upload_img`/`upload_video`):

    image   squashed to 224 x 224 (Pillow's bicubic; no crop, the aspect ratio not kept), CLIP's
            mean/std -> (3, 1, 224, 224): a one-frame video
    video   8 frames at `arange(0, n, n / 8)` (start-aligned; fewer for a shorter video), each
            squashed to 224 x 224 as decord did it at decode time, CLIP's mean/std
            -> (3, T, 224, 224), and the sentence that tells the LLM when each frame was taken
    audio   the file's (or the video's) sound through ImageBind's audio preprocessing, in 8 clips of
            2 s placed by pytorchvideo 0.1.5 -> (8, 1, 128, 204)

The decoders, their limits and their errors are the PandaGPT path's (encoders/image.py, video.py,
audio.py): a file is sniffed, bounded before it is decoded and refused with the field's name.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from PIL import Image

from encoders import audio, image, video
from encoders.clips import clip_timepoints
from encoders.limits import MediaLimits

# What Video-LLaMA takes, in the order a turn's uploads take in the prompt; audio needs the AL branch.
MODALITIES = ("image", "video", "audio")
VISUAL_MODALITIES = ("image", "video")
SIZE = 224
FRAMES = 8
AUDIO_CLIPS = 8


def normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> float32 (3, T, H, W): ToTensor's x / 255, then Normalize's (x - mean) / std,
    all in float32 as torchvision computed them."""
    scaled = pixels.astype(np.float32) / np.float32(255)
    return ((scaled - image.CLIP_MEAN) / image.CLIP_STD).transpose(3, 0, 1, 2).copy()


def load_image(data: bytes, field: str, limits: MediaLimits) -> np.ndarray:
    """An image file -> float32 (3, 1, 224, 224). Squashed, not cropped: Blip2ImageEvalProcessor's
    Resize((224, 224), BICUBIC), which on a Pillow image is Pillow's own resize. Its cost is bounded
    by the input's pixels (the output is always 224 x 224)."""
    squashed = image.decode_image(data, field, limits).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
    return normalise(np.asarray(squashed)[None])


def frame_indices(frames: int, wanted: int = FRAMES) -> list[int]:
    """load_video's "uniform" sampling: `arange(0, frames, frames / n)` truncated, n = min(wanted, frames)."""
    n = min(wanted, frames)
    return np.arange(0, frames, frames / n).astype(int).tolist()


def timestamp_sentence(indices: list[int], fps: float) -> str:
    """The text upstream puts after the video's placeholder. Python's round ties to even, as upstream's
    did (0.25 s reads "0.2")."""
    times = ", ".join(str(round(i / float(fps), 1)) for i in indices)
    return f"The video contains {len(indices)} frames sampled at {times} seconds. "


def squash_frame(frame: av.VideoFrame) -> np.ndarray:
    """decord's `VideoReader(height=224, width=224)`: FFmpeg's scale filter with decord's flag (bilinear),
    then rgb24 - the same filter chain, so the same pixels (tests/encoders/test_videollama_preprocess.py
    compares them with decord 0.6.0)."""
    graph = av.filter.Graph()
    source = graph.add_buffer(width=frame.width, height=frame.height, format=frame.format, time_base=Fraction(1, 1))
    scale = graph.add("scale", f"{SIZE}:{SIZE}:flags=bilinear")
    to_rgb = graph.add("format", "rgb24")
    sink = graph.add("buffersink")
    source.link_to(scale)
    scale.link_to(to_rgb)
    to_rgb.link_to(sink)
    graph.configure()
    graph.push(frame)
    return graph.pull().to_ndarray()


def load_video(data: bytes, field: str, limits: MediaLimits) -> tuple[np.ndarray, str]:
    """A video file -> (float32 (3, T, 224, 224), its timestamp sentence), T = min(8, its frames)."""
    picked: list[tuple[list[int], float]] = []

    def pick(frames: int, fps: float) -> list[int]:  # fps: decord's get_avg_fps, the stream's average rate
        picked.append((frame_indices(frames), fps))
        return picked[-1][0]

    frames = video.sample_frames(data, field, limits, pick, to_array=squash_frame)
    indices, fps = picked[0]
    return normalise(np.stack(frames)), timestamp_sentence(indices, fps)


def videollama_audio_clips(duration: float) -> list[tuple[Fraction, Fraction]]:
    return clip_timepoints(duration, AUDIO_CLIPS, to_the_end=False)


def load_audio(data: bytes, field: str, limits: MediaLimits) -> np.ndarray:
    """An audio file, or a video's audio track -> float32 (8, 1, 128, 204). A video without one raises
    InvalidMedia: the caller falls back to the video alone, as the demo did."""
    return audio.load_audio(data, field, limits, videollama_audio_clips)
