"""Video-LLaMA's encoders, checkpoint-compatible with its released files: the vision branch
(EVA ViT-g, BLIP-2 Q-Former, video Q-Former, ``llama_proj``) and the audio branch on top of our
ImageBind (audio Q-Former, ``audio_llama_proj``)."""

from __future__ import annotations

from .audio import VideoLlamaAudio, imagebind_audio_clip_embeddings
from .config import PRESETS, VideoLlamaConfig
from .eva_vit import EvaViT, half_like_original
from .qformer import QFormer
from .vision import VideoLlamaVision

__all__ = [
    "PRESETS",
    "EvaViT",
    "QFormer",
    "VideoLlamaAudio",
    "VideoLlamaConfig",
    "VideoLlamaVision",
    "half_like_original",
    "imagebind_audio_clip_embeddings",
]
