"""Video-LLaMA's vision branch: frames -> EVA ViT-g -> ``ln_vision`` -> BLIP-2 Q-Former (32 queries
per frame) -> + frame position -> video Q-Former (32 queries over all frames) -> ``llama_proj``.

An image is a one-frame video (frame position 0), so images and videos both give
``num_video_query_token`` soft-prompt vectors. Attribute names are the original model's, so the
state dict has its keys: ``visual_encoder.*``, ``ln_vision.*``, ``Qformer.*``, ``query_tokens``
(from ``eva_vit_g.pth`` and ``blip2_pretrained_flant5xxl.pth``), ``llama_proj.*``,
``video_frame_position_embedding.*``, ``video_Qformer.*``, ``video_query_tokens`` (from the VL
checkpoint).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import IMAGE_SIZE, VideoLlamaConfig
from .eva_vit import EvaViT
from .qformer import QFormer


class FP32LayerNorm(nn.LayerNorm):
    """BLIP-2's ``LayerNorm``: computed in fp32, returned in the input's dtype (eps: torch's 1e-5)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class VideoLlamaVision(nn.Module):
    def __init__(self, config: VideoLlamaConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        # Own parameters first: the original model lists its query tokens before its submodules.
        self.query_tokens = nn.Parameter(torch.zeros(1, c.num_query_token, c.qformer_hidden))
        self.video_query_tokens = nn.Parameter(torch.zeros(1, c.num_video_query_token, c.qformer_hidden))
        self.visual_encoder = EvaViT(c)
        self.ln_vision = FP32LayerNorm(c.vision_width)
        self.Qformer = QFormer(
            c,
            num_layers=c.qformer_layers,
            encoder_width=c.vision_width,
            cross_attention_freq=c.qformer_cross_attention_freq,
        )
        self.llama_proj = nn.Linear(c.qformer_hidden, c.llm_hidden_size)
        self.video_frame_position_embedding = nn.Embedding(c.max_frame_pos, c.qformer_hidden)
        self.video_Qformer = QFormer(c, num_layers=c.video_qformer_layers, encoder_width=c.qformer_hidden)
        nn.init.normal_(self.query_tokens, std=0.02)
        nn.init.normal_(self.video_query_tokens, std=0.02)

    def forward(self, frames: Tensor) -> Tensor:
        """(B, 3, T, 224, 224) normalised frames, T <= max_frame_pos -> (B, num_video_query_token, llm hidden)."""
        c = self.config
        if frames.ndim != 5 or frames.shape[1] != 3 or tuple(frames.shape[3:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"frames must be (B, 3, T, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(frames.shape)}")
        batch, _, num_frames, height, width = frames.shape
        if not 1 <= num_frames <= c.max_frame_pos:
            raise ValueError(f"a video has 1 to {c.max_frame_pos} frames (its frame positions), got {num_frames}")
        images = frames.transpose(1, 2).reshape(batch * num_frames, 3, height, width)
        image_embeds = self.ln_vision(self.visual_encoder(images))
        frame_queries = self.Qformer(self.query_tokens.expand(batch * num_frames, -1, -1), image_embeds)
        # One position per frame, broadcast over that frame's queries; then all frames' queries in a row.
        frame_queries = frame_queries.view(batch, num_frames, c.num_query_token, -1)
        positions = self.video_frame_position_embedding.weight[:num_frames]
        frame_queries = (positions[None, :, None, :] + frame_queries).flatten(1, 2)
        video_queries = self.video_Qformer(self.video_query_tokens.expand(batch, -1, -1), frame_queries)
        return self.llama_proj(video_queries)

    def encode_images(self, images: Tensor) -> Tensor:
        """(B, 3, 224, 224) -> (B, num_video_query_token, llm hidden): each image a one-frame video."""
        return self(images.unsqueeze(2))
