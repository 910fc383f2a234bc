"""The key half of the Video-LLaMA converter: the released files' state dicts -> the state dicts of
``encoders.videollama``'s vision and audio branches, with strict accounting, and the branches'
sizes read from the tensors. File reading and bundle writing are the converter's other half.

Where each weight comes from (upstream loads them in this order, each with strict=False):
    eva_vit_g.pth                  a bare EVA ViT-g state dict (no prefix), 40 blocks; upstream builds
                                   one block fewer, so the last block is dropped -> ``visual_encoder.*``
    blip2_pretrained_flant5xxl.pth ``["model"]``: ``ln_vision.*``, ``query_tokens``, ``Qformer.*``
    VL .pth                        ``["model"]``: ``llama_proj.*``, ``video_frame_position_embedding.*``,
                                   ``video_query_tokens``, ``video_Qformer.*``
    AL .pth                        ``["model"]``: ``audio_query_tokens``, ``audio_Qformer.*``,
                                   ``audio_llama_proj.*``, ``audio_position_embedding.*``
Every other key must be one upstream also leaves unused: the BLIP-2 Q-Former's text side and its
stage-1 heads, which Video-LLaMA never builds; and the persistent buffers every training
checkpoint carries (the Q-Formers' ``position_ids``, the frozen LLaMA's ``rotary_emb.inv_freq``,
ImageBind's text mask and logit scales). Anything else is an error that names it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from encoders.videollama import VideoLlamaAudio, VideoLlamaConfig, VideoLlamaVision
from encoders.videollama.config import QFORMER_HEAD_DIM, VISION_HEAD_DIM

_SHOW = 5  # keys named per kind in an error message

# The weights each file provides, by the original names.
_EVA_OWN = re.compile(r"^(cls_token|pos_embed|patch_embed\.proj\.(weight|bias)|blocks\.\d+\..+)$")
_QFORMER_QUERY_SIDE = (
    r"bert\.embeddings\.LayerNorm\.(weight|bias)"
    r"|bert\.encoder\.layer\.\d+\.(attention|crossattention|intermediate_query|output_query)\..+"
)
_BLIP2_OWN = re.compile(rf"^(ln_vision\.(weight|bias)|query_tokens|Qformer\.({_QFORMER_QUERY_SIDE}))$")
_VL_OWN = re.compile(
    rf"^(llama_proj\.(weight|bias)|video_frame_position_embedding\.weight|video_query_tokens"
    rf"|video_Qformer\.({_QFORMER_QUERY_SIDE}))$"
)
_AL_OWN = re.compile(
    rf"^(audio_query_tokens|audio_llama_proj\.(weight|bias)|audio_position_embedding\.weight"
    rf"|audio_Qformer\.({_QFORMER_QUERY_SIDE}))$"
)
# What upstream loads into nothing (strict=False) or never reads: the BLIP-2 Q-Former's text side
# (set to None in Video-LLaMA) and its stage-1 contrastive/matching heads.
_BLIP2_UNUSED = re.compile(
    r"^(Qformer\.cls\..+"
    r"|Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.weight"
    r"|Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)"
    r"|vision_proj\.(weight|bias)|text_proj\.(weight|bias)|itm_head\.(weight|bias)|temp)$"
)
# Persistent buffers: kept by upstream's checkpoint saver beside the trainable weights (upstream's
# save rule drops only parameters without grad).
_BUFFERS = re.compile(
    r"^((Qformer|video_Qformer|audio_Qformer)\.bert\.embeddings\.position_ids"
    r"|llama_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq"
    r"|audio_encoder\.modality_preprocessors\.text\.mask"
    r"|audio_encoder\.modality_postprocessors\.(audio|depth|thermal|imu)\.1\.log_logit_scale)$"
)
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_LAYER = re.compile(r"^(\w+)\.bert\.encoder\.layer\.(\d+)\.")


class CheckpointKeyError(ValueError):
    """A released file's keys or shapes are not what Video-LLaMA's code would load."""


def _natural(key: str) -> list[int | str]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _named(keys: list[str]) -> str:
    keys = sorted(keys, key=_natural)
    more = f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


def _take(
    source: str, state: Mapping[str, Tensor], own: re.Pattern[str], unused: re.Pattern[str] | None = None
) -> dict[str, Tensor]:
    unexpected = [k for k in state if not own.match(k) and not _BUFFERS.match(k) and not (unused and unused.match(k))]
    if unexpected:
        raise CheckpointKeyError(f"{source}: {len(unexpected)} unexpected keys: {_named(unexpected)}")
    return {k: v for k, v in state.items() if own.match(k)}


def map_vision(
    eva_vit: Mapping[str, Tensor], blip2: Mapping[str, Tensor], vl: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """The three files' state dicts (the BLIP-2 and VL files' ``["model"]``) -> the vision branch's."""
    eva = _take("eva_vit_g.pth", eva_vit, _EVA_OWN)
    blocks = {int(m.group(1)) for k in eva if (m := _BLOCK.match(k))}
    if blocks != set(range(len(blocks))) or len(blocks) < 2:
        raise CheckpointKeyError(f"eva_vit_g.pth: blocks must be numbered 0..N-1 with N >= 2, got {sorted(blocks)}")
    # Upstream builds 39 blocks and loads the 40-block file non-strictly: the last block is unused.
    last = f"blocks.{len(blocks) - 1}."
    state = {f"visual_encoder.{k}": v for k, v in eva.items() if not k.startswith(last)}
    state |= _take("the BLIP-2 checkpoint", blip2, _BLIP2_OWN, _BLIP2_UNUSED)
    state |= _take("the VL checkpoint", vl, _VL_OWN)
    return _with_position_ids(state)


def map_audio(al: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The AL file's ``["model"]`` -> the audio branch's state dict."""
    return _with_position_ids(_take("the AL checkpoint", al, _AL_OWN))


def _with_position_ids(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our Q-Formers' unused position_ids buffers, made afresh (bert-base's 512 positions)."""
    qformers = {m.group(1) for k in state if (m := _LAYER.match(k))}
    positions = torch.arange(VideoLlamaConfig().qformer_max_positions).expand((1, -1))
    return state | {f"{q}.bert.embeddings.position_ids": positions for q in qformers}


def _count(state: Mapping[str, Tensor], qformer: str) -> int:
    return len({m.group(2) for k in state if (m := _LAYER.match(k)) and m.group(1) == qformer})


def _heads(width: int, head_dim: int, what: str) -> int:
    if width % head_dim:
        raise CheckpointKeyError(f"{what} width {width} is not a multiple of upstream's head size {head_dim}")
    return width // head_dim


def _cross_attention_freq(state: Mapping[str, Tensor], qformer: str, layers: int) -> int:
    cross = {i for i in range(layers) if f"{qformer}.bert.encoder.layer.{i}.crossattention.self.key.weight" in state}
    for freq in range(1, layers + 1):
        if cross == {i for i in range(layers) if i % freq == 0}:
            return freq
    raise CheckpointKeyError(f"{qformer}: cross-attention in layers {sorted(cross)} follows no fixed frequency")


def infer_config(vision: Mapping[str, Tensor], audio: Mapping[str, Tensor] | None = None) -> VideoLlamaConfig:
    """Sizes from mapped state dicts (``map_vision``/``map_audio``), with upstream's head sizes."""
    try:
        width = vision["visual_encoder.cls_token"].shape[-1]
        hidden = vision["query_tokens"].shape[-1]
        qformer_layers = _count(vision, "Qformer")
        fields = {
            "llm_hidden_size": vision["llama_proj.weight"].shape[0],
            "vision_width": width,
            "vision_depth": len({m.group(1) for k in vision if (m := re.match(r"visual_encoder\.blocks\.(\d+)\.", k))}),
            "vision_heads": _heads(width, VISION_HEAD_DIM, "EVA ViT"),
            "vision_mlp_dim": vision["visual_encoder.blocks.0.mlp.fc1.weight"].shape[0],
            "qformer_hidden": hidden,
            "qformer_heads": _heads(hidden, QFORMER_HEAD_DIM, "Q-Former"),
            "qformer_intermediate": vision["Qformer.bert.encoder.layer.0.intermediate_query.dense.weight"].shape[0],
            "qformer_layers": qformer_layers,
            "qformer_cross_attention_freq": _cross_attention_freq(vision, "Qformer", qformer_layers),
            "num_query_token": vision["query_tokens"].shape[1],
            "video_qformer_layers": _count(vision, "video_Qformer"),
            "num_video_query_token": vision["video_query_tokens"].shape[1],
            "max_frame_pos": vision["video_frame_position_embedding.weight"].shape[0],
        }
        if audio is not None:
            clips, audio_width = audio["audio_position_embedding.weight"].shape
            fields |= {
                "audio_encoder_width": audio_width,
                "audio_qformer_layers": _count(audio, "audio_Qformer"),
                "num_audio_query_token": audio["audio_query_tokens"].shape[1],
                "max_audio_clips": clips,
            }
    except KeyError as e:
        raise CheckpointKeyError(f"missing key {e.args[0]}") from None
    return VideoLlamaConfig(**{k: int(v) for k, v in fields.items()})


def check_state(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Missing, unexpected and misshapen keys of ``state`` against ``model`` (built on meta), named."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    problems = []
    if missing := [k for k in expected if k not in actual]:
        problems.append(f"{len(missing)} missing: {_named(missing)}")
    if unexpected := [k for k in actual if k not in expected]:
        problems.append(f"{len(unexpected)} unexpected: {_named(unexpected)}")
    if misshapen := [k for k in expected if k in actual and actual[k] != expected[k]]:
        shown = sorted(misshapen, key=_natural)[:_SHOW]
        problems.append(
            f"{len(misshapen)} misshapen: " + ", ".join(f"{k} {list(actual[k])} != {list(expected[k])}" for k in shown)
        )
    if problems:
        raise CheckpointKeyError(f"{what}: " + "; ".join(problems))


def check_branches(vision: Mapping[str, Tensor], audio: Mapping[str, Tensor] | None = None) -> VideoLlamaConfig:
    """The config the files describe, once every key and shape agrees with it (both branches)."""
    config = infer_config(vision, audio)
    with torch.device("meta"):
        check_state(VideoLlamaVision(config), vision, "vision branch")
        if audio is not None:
            check_state(VideoLlamaAudio(config), audio, "audio branch")
    return config
