"""Video-LLaMA's encoder hyper-parameters: the vision branch (EVA ViT-g, BLIP-2 Q-Former, video
Q-Former, ``llama_proj``) and the audio branch (audio Q-Former, ``audio_llama_proj``).

Every width is an explicit integer so that a config can be read off a checkpoint's tensor shapes
(the converter does that) and round-trips through JSON (the bundle's manifest). The defaults are
the released model with a 7B LLM (hidden 4096).
"""

from __future__ import annotations

from dataclasses import dataclass

# Input geometry fixed by the checkpoints: EVA ViT-g's learned position embedding covers a 224x224
# image in 14x14 patches (16 x 16 + CLS = 257 tokens); nothing interpolates it at inference.
IMAGE_SIZE = 224
PATCH_SIZE = 14
# Upstream's head sizes: EVA ViT-g builds 1408 // 88 = 16 heads, bert-base 768 / 12 = 64 per head.
# A checkpoint carries widths, never head counts; the converter divides by these.
VISION_HEAD_DIM = 88
QFORMER_HEAD_DIM = 64


@dataclass(frozen=True)
class VideoLlamaConfig:
    # The LLM's hidden size: the output width of llama_proj and audio_llama_proj.
    llm_hidden_size: int = 4096
    # EVA-CLIP ViT-g/14, built with 39 of its 40 blocks (the output is BLIP-2's second-to-last layer).
    vision_width: int = 1408
    vision_depth: int = 39
    vision_heads: int = 16
    vision_mlp_dim: int = 6144  # int(1408 * 4.3637), upstream's mlp_ratio
    # BLIP-2's Q-Former: bert-base-uncased, cross-attention in every 2nd layer, 32 queries.
    qformer_hidden: int = 768
    qformer_heads: int = 12
    qformer_intermediate: int = 3072
    qformer_layers: int = 12
    qformer_cross_attention_freq: int = 2
    num_query_token: int = 32
    # bert-base's max_position_embeddings: only the length of the (unused, persistent) position_ids
    # buffer every Q-Former carries, which the released checkpoints hold.
    qformer_max_positions: int = 512
    # The video Q-Former: bert-base trimmed to 2 layers, cross-attention in every layer.
    video_qformer_layers: int = 2
    num_video_query_token: int = 32
    max_frame_pos: int = 32
    # The audio Q-Former, on ImageBind-huge's per-clip 1024-d embeddings.
    audio_encoder_width: int = 1024
    audio_qformer_layers: int = 2
    num_audio_query_token: int = 8
    max_audio_clips: int = 8

    def __post_init__(self) -> None:
        if self.vision_width % self.vision_heads:
            raise ValueError(f"vision_width={self.vision_width} is not divisible by vision_heads={self.vision_heads}")
        if self.qformer_hidden % self.qformer_heads:
            raise ValueError(
                f"qformer_hidden={self.qformer_hidden} is not divisible by qformer_heads={self.qformer_heads}"
            )


def _full(llm_hidden_size: int) -> VideoLlamaConfig:
    return VideoLlamaConfig(llm_hidden_size=llm_hidden_size)


PRESETS: dict[str, VideoLlamaConfig] = {
    # The released checkpoints: Vicuna v0 / LLaMA-2-chat 7B (hidden 4096) and 13B (hidden 5120).
    "7b": _full(4096),
    "13b": _full(5120),
    # Tests and the demo: the same modules and key names, tiny widths, upstream's head sizes (88 and
    # 64, so the converter reads it like a real checkpoint) and the same input geometry. The LLM
    # width is the demo LLaMA's. The audio encoder width stays ImageBind's 1024 output.
    "tiny": VideoLlamaConfig(
        llm_hidden_size=256,
        vision_width=2 * VISION_HEAD_DIM,
        vision_depth=2,
        vision_heads=2,
        vision_mlp_dim=768,  # int(176 * 4.3637), as upstream would build it
        qformer_hidden=2 * QFORMER_HEAD_DIM,
        qformer_heads=2,
        qformer_intermediate=256,
        qformer_layers=2,
        num_query_token=32,
        video_qformer_layers=2,
        num_video_query_token=32,
        max_frame_pos=32,
        audio_qformer_layers=2,
        num_audio_query_token=8,
        max_audio_clips=8,
    ),
}
