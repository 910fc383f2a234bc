"""Video-LLaMA's encoders rebuilt from Transformers' BLIP-2 classes, an implementation independent of
encoders/videollama: the original state-dict names mapped onto ``Blip2VisionModel`` (EVA ViT-g +
``ln_vision`` as its ``post_layernorm``) and ``Blip2QFormerModel``.

Two differences of Transformers' classes from the original are bridged here, and are why the
service does not run them: one ``layer_norm_eps`` for every vision LayerNorm (1e-6), while
``ln_vision`` uses 1e-5; and the Q-Former kept in fp32 (``encoder_hidden_states`` cast up), while
the original runs it under fp16 autocast on a GPU. Transformers also folds ``q_bias``/``v_bias``
into one ``qkv.bias`` parameter whose key block is a zero it could learn.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor
from transformers import Blip2QFormerConfig, Blip2QFormerModel, Blip2VisionConfig, Blip2VisionModel

LN_VISION_EPS = 1e-5


def _take(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def hf_vision(state: Mapping[str, Tensor], heads: int) -> Blip2VisionModel:
    """``visual_encoder.*`` + ``ln_vision.*`` (original names) -> Blip2VisionModel, eval, fp32."""
    vit = _take(state, "visual_encoder.")
    width = vit["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in vit if k.startswith("blocks.")})
    config = Blip2VisionConfig(
        hidden_size=width,
        intermediate_size=vit["blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=224,
        patch_size=vit["patch_embed.proj.weight"].shape[-1],
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        qkv_bias=True,
    )
    config._attn_implementation = "eager"
    mapped = {
        "embeddings.class_embedding": vit["cls_token"],
        "embeddings.position_embedding": vit["pos_embed"],
        "embeddings.patch_embedding.weight": vit["patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": vit["patch_embed.proj.bias"],
        "post_layernorm.weight": state["ln_vision.weight"],
        "post_layernorm.bias": state["ln_vision.bias"],
    }
    names = {
        "norm1": "layer_norm1",
        "norm2": "layer_norm2",
        "attn.qkv": "self_attn.qkv",
        "attn.proj": "self_attn.projection",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for i in range(depth):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                if ours == "attn.qkv" and p == "bias":
                    continue
                mapped[f"encoder.layers.{i}.{theirs}.{p}"] = vit[f"blocks.{i}.{ours}.{p}"]
        q, v = vit[f"blocks.{i}.attn.q_bias"], vit[f"blocks.{i}.attn.v_bias"]
        mapped[f"encoder.layers.{i}.self_attn.qkv.bias"] = torch.cat((q, torch.zeros_like(v), v))
    model = Blip2VisionModel(config)
    model.load_state_dict(mapped, strict=True)
    model.post_layernorm.eps = LN_VISION_EPS
    return model.eval()


def hf_qformer(state: Mapping[str, Tensor], prefix: str, heads: int, cross_attention_freq: int) -> Blip2QFormerModel:
    """``{prefix}bert.*`` (original names, e.g. prefix ``video_Qformer.``) -> Blip2QFormerModel, eval, fp32."""
    bert = _take(state, prefix + "bert.")
    hidden = bert["embeddings.LayerNorm.weight"].shape[0]
    layers = len({k.split(".")[2] for k in bert if k.startswith("encoder.layer.")})
    config = Blip2QFormerConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=bert["encoder.layer.0.intermediate_query.dense.weight"].shape[0],
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        cross_attention_frequency=cross_attention_freq,
        encoder_hidden_size=bert["encoder.layer.0.crossattention.self.key.weight"].shape[1],
        use_qformer_text_input=False,
    )
    config._attn_implementation = "eager"
    mapped = {
        "layernorm.weight": bert["embeddings.LayerNorm.weight"],
        "layernorm.bias": bert["embeddings.LayerNorm.bias"],
    }
    for key, value in bert.items():
        if key.startswith("encoder."):
            mapped[key.replace(".self.", ".attention.")] = value
    model = Blip2QFormerModel(config)
    model.load_state_dict(mapped, strict=True)
    return model.eval()


class HFVideoLlama:
    """The vision and audio branches' forward on Transformers' classes, from an original state dict."""

    def __init__(self, state: Mapping[str, Tensor], vision_heads: int, qformer_heads: int) -> None:
        self.state = state
        self.vision = hf_vision(state, vision_heads) if "ln_vision.weight" in state else None
        self.qformer = hf_qformer(state, "Qformer.", qformer_heads, 2) if "query_tokens" in state else None
        self.video_qformer = (
            hf_qformer(state, "video_Qformer.", qformer_heads, 1) if "video_query_tokens" in state else None
        )
        self.audio_qformer = (
            hf_qformer(state, "audio_Qformer.", qformer_heads, 1) if "audio_query_tokens" in state else None
        )

    @torch.no_grad()
    def video(self, frames: Tensor) -> Tensor:
        """(B, 3, T, 224, 224) -> (B, 32, hidden)."""
        assert self.vision is not None and self.qformer is not None and self.video_qformer is not None
        s = self.state
        b, _, t, h, w = frames.shape
        images = frames.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
        image_embeds = self.vision(pixel_values=images).last_hidden_state
        queries = s["query_tokens"].expand(b * t, -1, -1)
        frame_q = self.qformer(query_embeds=queries, encoder_hidden_states=image_embeds).last_hidden_state
        frame_q = frame_q.reshape(b, t, frame_q.shape[1], -1)
        positions = torch.nn.functional.embedding(torch.arange(t), s["video_frame_position_embedding.weight"])
        frame_q = (positions[None, :, None, :] + frame_q).reshape(b, -1, frame_q.shape[-1])
        video_queries = s["video_query_tokens"].expand(b, -1, -1)
        out = self.video_qformer(query_embeds=video_queries, encoder_hidden_states=frame_q).last_hidden_state
        return torch.nn.functional.linear(out, s["llama_proj.weight"], s["llama_proj.bias"])

    @torch.no_grad()
    def audio(self, clip_embeddings: Tensor) -> Tensor:
        """(B, S, 1024) ImageBind clip embeddings (normalised, x20) -> (B, 8, hidden)."""
        assert self.audio_qformer is not None
        s = self.state
        b, n, _ = clip_embeddings.shape
        positions = torch.nn.functional.embedding(torch.arange(n), s["audio_position_embedding.weight"])
        states = clip_embeddings + positions[None]
        queries = s["audio_query_tokens"].expand(b, -1, -1)
        out = self.audio_qformer(query_embeds=queries, encoder_hidden_states=states).last_hidden_state
        return torch.nn.functional.linear(out, s["audio_llama_proj.weight"], s["audio_llama_proj.bias"])
