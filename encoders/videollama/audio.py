"""Video-LLaMA's audio branch: ImageBind-huge's audio embedding of each 2 s clip (L2-normalised,
x20, one per clip, not averaged) + clip position -> audio Q-Former (8 queries) -> ``audio_llama_proj``.

ImageBind itself is the one in ``encoders.imagebind`` (shared with PandaGPT, loaded once): the
branch's own weights are those of the AL checkpoint, under the original names
``audio_query_tokens``, ``audio_Qformer.*``, ``audio_llama_proj.*``, ``audio_position_embedding.*``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.imagebind import ImageBindModel
from encoders.imagebind.layers import LogitScale

from .config import VideoLlamaConfig
from .qformer import QFormer


def imagebind_audio_clip_embeddings(imagebind: ImageBindModel, mel: Tensor) -> Tensor:
    """(B, S, 1, 128, 204) log-mel clips -> (B, S, out_dim): upstream ``get_audio_feature``'s second output.

    Each clip goes through the audio stem, trunk and head, then ImageBind's own audio postprocessor:
    L2 normalise and x exp(log_logit_scale) (20), capped at 100. Our ImageBind leaves that x20 off
    for PandaGPT (its projector saw unit vectors), so it is applied here from the same buffer.
    """
    if mel.ndim != 5:
        raise ValueError(f"audio clips must be (B, S, 1, 128, 204), got {tuple(mel.shape)}")
    batch, clips = mel.shape[:2]
    prep = imagebind.modality_preprocessors["audio"](mel.flatten(0, 1))
    tokens = imagebind.modality_trunks["audio"](**prep["trunk"])
    embeddings = imagebind.modality_heads["audio"](tokens, **prep["head"])
    postprocessor = imagebind.modality_postprocessors["audio"]
    assert isinstance(postprocessor, nn.Sequential)
    scale = postprocessor[1]
    assert isinstance(scale, LogitScale)
    # In fp32 whatever the model's dtype: upstream's ImageBind kept fp32 weights under fp16 autocast.
    factor = torch.clamp(scale.log_logit_scale.float().exp(), max=scale.max_logit_scale)
    return (factor * F.normalize(embeddings, dim=-1)).view(batch, clips, -1)


class VideoLlamaAudio(nn.Module):
    def __init__(self, config: VideoLlamaConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.audio_query_tokens = nn.Parameter(torch.zeros(1, c.num_audio_query_token, c.qformer_hidden))
        self.audio_Qformer = QFormer(c, num_layers=c.audio_qformer_layers, encoder_width=c.audio_encoder_width)
        self.audio_llama_proj = nn.Linear(c.qformer_hidden, c.llm_hidden_size)
        self.audio_position_embedding = nn.Embedding(c.max_audio_clips, c.audio_encoder_width)
        nn.init.normal_(self.audio_query_tokens, std=0.02)

    def forward(self, clip_embeddings: Tensor) -> Tensor:
        """(B, S, audio_encoder_width), S <= max_audio_clips -> (B, num_audio_query_token, llm hidden)."""
        c = self.config
        if clip_embeddings.ndim != 3 or clip_embeddings.shape[2] != c.audio_encoder_width:
            raise ValueError(
                f"clip embeddings must be (B, S, {c.audio_encoder_width}), got {tuple(clip_embeddings.shape)}"
            )
        batch, clips, _ = clip_embeddings.shape
        if not 1 <= clips <= c.max_audio_clips:
            raise ValueError(f"an audio track has 1 to {c.max_audio_clips} clips (its positions), got {clips}")
        states = clip_embeddings + self.audio_position_embedding.weight[:clips]
        queries = self.audio_Qformer(self.audio_query_tokens.expand(batch, -1, -1), states)
        return self.audio_llama_proj(queries)
