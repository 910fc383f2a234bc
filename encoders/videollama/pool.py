"""Video-LLaMA's encoders in the pool (encoders/pool.py): an image, a video (with its sound) or an
audio file -> its soft prompt, the vectors that stand in for its `<ImageHere>` placeholders.

    image  -> the vision branch as a one-frame video                       [32, hidden]
    video  -> the vision branch on its 8 frames, with the timestamp sentence [32, hidden]
              and, with the audio branch, its sound in 8 clips              + [8, hidden]
    audio  -> ImageBind's 8 clip embeddings -> the audio branch             [8, hidden]

A video whose sound cannot be read (none, or a corrupt track) is served as a video alone, as the
demo fell back to `upload_video_without_audio`; its SoftPrompt then has no audio_track, and the
reply's metadata says so. On a GPU the branches run as the original did: EVA ViT's Linear and
Conv weights in fp16, everything under fp16 autocast; on a CPU in fp32.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from encoders.cache import EmbeddingCache
from encoders.errors import InvalidMedia, UnsupportedMediaType
from encoders.imagebind import ImageBindModel
from encoders.limits import MediaLimits
from encoders.media import MediaInput, SoftPrompt
from encoders.pool import Batching, Loader, MediaPool, PoolObserver

from . import preprocess
from .audio import VideoLlamaAudio, imagebind_audio_clip_embeddings
from .config import VideoLlamaConfig
from .eva_vit import half_like_original
from .vision import VideoLlamaVision


@dataclass(frozen=True)
class VideoInput:
    frames: np.ndarray  # (3, T, 224, 224), T <= 8
    timestamps: str
    sound: np.ndarray | None = None  # (8, 1, 128, 204); None: served without its sound


def load_video(data: bytes, field: str, limits: MediaLimits) -> VideoInput:
    return VideoInput(*preprocess.load_video(data, field, limits))


def load_video_with_sound(data: bytes, field: str, limits: MediaLimits) -> VideoInput:
    video = load_video(data, field, limits)
    try:
        sound = preprocess.load_audio(data, field, limits)
    except (InvalidMedia, UnsupportedMediaType):  # no track, or one that cannot be read; a costly one is refused
        return video
    return replace(video, sound=sound)


def load_branches(
    config: VideoLlamaConfig, vision_path: Path, audio_path: Path | None, device: str
) -> tuple[VideoLlamaVision, VideoLlamaAudio | None]:
    """The bundle's branches, loaded strictly under their original key names."""
    vision = VideoLlamaVision(config)
    vision.load_state_dict(load_file(str(vision_path)), strict=True)
    audio = None
    if audio_path is not None:
        audio = VideoLlamaAudio(config)
        audio.load_state_dict(load_file(str(audio_path)), strict=True)
    if device == "cuda":
        half_like_original(vision.visual_encoder)
    vision = vision.to(device).eval().requires_grad_(False)
    return vision, None if audio is None else audio.to(device).eval().requires_grad_(False)


class VideoLlamaPool(MediaPool[SoftPrompt]):
    def __init__(
        self,
        vision: VideoLlamaVision,
        audio: VideoLlamaAudio | None,
        imagebind: ImageBindModel | None,
        limits: MediaLimits,
        *,
        batching: Batching | None = None,
        cache: EmbeddingCache | None = None,
        device: str = "cpu",
        observer: PoolObserver | None = None,
    ) -> None:
        if (audio is None) != (imagebind is None):
            raise ValueError("Video-LLaMA's audio branch runs on ImageBind: give both or neither")
        modalities = preprocess.MODALITIES if audio is not None else preprocess.VISUAL_MODALITIES
        super().__init__(limits, modalities, batching=batching, cache=cache, observer=observer)
        self.vision, self.audio, self.imagebind = vision, audio, imagebind
        self.device = torch.device(device)

    def loader(self, modality: str) -> Loader:
        if modality == "image":
            return preprocess.load_image
        if modality == "video":
            return load_video_with_sound if self.audio is not None else load_video
        return preprocess.load_audio

    @torch.inference_mode()
    def predict(self, modality: str, batch: list[Any]) -> list[SoftPrompt]:
        with self._autocast():
            if modality == "image":
                return [SoftPrompt(v) for v in self._vision(np.stack(batch))]
            if modality == "audio":
                return [SoftPrompt(v) for v in self._sound(np.stack(batch))]
            # A video at a time: videos shorter than 8 frames have fewer, so their inputs do not stack.
            return [self._video(video) for video in batch]

    def _video(self, video: VideoInput) -> SoftPrompt:
        [vectors] = self._vision(video.frames[None])
        track = None if video.sound is None else self._sound(video.sound[None])[0]
        return SoftPrompt(vectors, track, video.timestamps)

    def _vision(self, frames: np.ndarray) -> list[torch.Tensor]:
        out = self.vision(torch.from_numpy(frames).to(self.device))
        return [row.float().cpu().clone() for row in out]

    def _sound(self, clips: np.ndarray) -> list[torch.Tensor]:
        assert self.audio is not None and self.imagebind is not None
        dtype = next(self.imagebind.parameters()).dtype
        mel = torch.from_numpy(clips).to(self.device, dtype)
        out = self.audio(imagebind_audio_clip_embeddings(self.imagebind, mel).float())
        return [row.float().cpu().clone() for row in out]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Upstream's `maybe_autocast`: fp16 autocast on a GPU, nothing on a CPU."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def to_bytes(self, result: SoftPrompt) -> bytes:
        tensors = {"vectors": result.vectors.float().contiguous()}
        if result.audio_track is not None:
            tensors["audio_track"] = result.audio_track.float().contiguous()
        return save_tensors(tensors, metadata={"timestamps": result.timestamps})

    def from_bytes(self, value: bytes) -> SoftPrompt:
        tensors = load_tensors(value)
        header = json.loads(value[8 : 8 + int.from_bytes(value[:8], "little")])  # safetensors' own layout
        return SoftPrompt(tensors["vectors"], tensors.get("audio_track"), header["__metadata__"]["timestamps"])


class VideoLlamaEncoder:
    """The chat core's `Encoder` for a Video-LLaMA bundle: soft prompts only. Video-LLaMA has no joint
    embedding space to offer, so /embeddings refuses its files by name."""

    def __init__(self, pool: VideoLlamaPool) -> None:
        self.pool = pool

    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        field = items[0].field if items else "file"
        raise UnsupportedMediaType(field, "this model is Video-LLaMA: it gives soft prompts, not ImageBind embeddings")

    async def soft_prompts(self, items: list[MediaInput]) -> list[SoftPrompt]:
        return await self.pool.encode(items)

    async def check_health(self) -> None:
        await self.pool.check_health()

    async def close(self) -> None:
        await self.pool.close()
