"""training.videollama_keys on synthetic released checkpoints: the real key names, a 40th-of-40 EVA
block to drop, the BLIP-2 file's text side and stage-1 heads, the persistent buffers upstream's
saver keeps; mapped weights load strictly and give the source model's outputs; bad files are
refused with the keys named."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from encoders.videollama import PRESETS, VideoLlamaAudio, VideoLlamaVision
from training.videollama_keys import CheckpointKeyError, check_branches, map_audio, map_vision

pytestmark = pytest.mark.unit

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def source() -> tuple[VideoLlamaVision, VideoLlamaAudio]:
    torch.manual_seed(0)
    return VideoLlamaVision(TINY).eval(), VideoLlamaAudio(TINY).eval()


def _released(
    vision: VideoLlamaVision, audio: VideoLlamaAudio
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """(eva_vit_g.pth, BLIP-2 ["model"], VL ["model"], AL ["model"]) as upstream's files lay them out."""
    sd = vision.state_dict()
    d = TINY.qformer_hidden
    eva = {k.removeprefix("visual_encoder."): v for k, v in sd.items() if k.startswith("visual_encoder.")}
    # The file has one block more than upstream builds (40 vs 39); its weights are never used.
    last = TINY.vision_depth
    eva |= {
        k.replace("blocks.0.", f"blocks.{last}.", 1): torch.randn(v.shape)
        for k, v in eva.items()
        if k.startswith("blocks.0.")
    }
    blip2 = {k: v for k, v in sd.items() if k.startswith(("Qformer.", "ln_vision.", "query_tokens"))}
    blip2 |= {
        "Qformer.bert.embeddings.word_embeddings.weight": torch.randn(30523, d),
        "Qformer.bert.embeddings.position_embeddings.weight": torch.randn(512, d),
        "Qformer.cls.predictions.bias": torch.randn(30523),
        "Qformer.cls.predictions.transform.dense.weight": torch.randn(d, d),
        "vision_proj.weight": torch.randn(256, d),
        "text_proj.weight": torch.randn(256, d),
        "itm_head.weight": torch.randn(2, d),
        "temp": torch.tensor(0.07),
    }
    for i in range(TINY.qformer_layers):
        blip2[f"Qformer.bert.encoder.layer.{i}.intermediate.dense.weight"] = torch.randn(TINY.qformer_intermediate, d)
        blip2[f"Qformer.bert.encoder.layer.{i}.output.LayerNorm.bias"] = torch.randn(d)
    buffers = {
        "Qformer.bert.embeddings.position_ids": torch.arange(512).expand(1, -1),
        "video_Qformer.bert.embeddings.position_ids": torch.arange(512).expand(1, -1),
        "llama_model.model.layers.0.self_attn.rotary_emb.inv_freq": torch.randn(32),
    }
    vl = {k: v for k, v in sd.items() if k.startswith(("video_", "llama_proj."))} | buffers
    al = dict(audio.state_dict()) | buffers
    al |= {
        "audio_encoder.modality_preprocessors.text.mask": torch.zeros(77, 77),
        "audio_encoder.modality_postprocessors.audio.1.log_logit_scale": torch.tensor(2.9957),
    }
    return eva, blip2, vl, al


def test_mapped_weights_load_strictly_and_reproduce_the_source(
    source: tuple[VideoLlamaVision, VideoLlamaAudio],
) -> None:
    vision, audio = source
    eva, blip2, vl, al = _released(vision, audio)
    vision_state, audio_state = map_vision(eva, blip2, vl), map_audio(al)
    assert check_branches(vision_state, audio_state) == TINY  # sizes read off the tensors
    with torch.device("meta"):
        vision2, audio2 = VideoLlamaVision(TINY), VideoLlamaAudio(TINY)
    vision2.load_state_dict(vision_state, strict=True, assign=True)
    audio2.load_state_dict(audio_state, strict=True, assign=True)
    video, clips = torch.randn(1, 3, 2, 224, 224), torch.randn(1, 8, 1024)
    with torch.no_grad():
        torch.testing.assert_close(vision2.eval()(video), vision(video), rtol=0, atol=0)
        torch.testing.assert_close(audio2.eval()(clips), audio(clips), rtol=0, atol=0)


def test_full_size_shapes_give_the_full_presets() -> None:
    """The 7B and 13B layouts (meta tensors, as the released files would be shaped) infer their presets."""
    for name in ("7b", "13b"):
        with torch.device("meta"):
            vision, audio = VideoLlamaVision(PRESETS[name]), VideoLlamaAudio(PRESETS[name])
        assert check_branches(vision.state_dict(), audio.state_dict()) == PRESETS[name]


def test_vision_only(source: tuple[VideoLlamaVision, VideoLlamaAudio]) -> None:
    eva, blip2, vl, _ = _released(*source)
    assert check_branches(map_vision(eva, blip2, vl)).llm_hidden_size == TINY.llm_hidden_size


def test_unexpected_keys_are_named(source: tuple[VideoLlamaVision, VideoLlamaAudio]) -> None:
    eva, blip2, vl, al = _released(*source)
    with pytest.raises(CheckpointKeyError, match=r"eva_vit_g\.pth: 1 unexpected keys: head\.weight"):
        map_vision(eva | {"head.weight": torch.zeros(1)}, blip2, vl)
    with pytest.raises(CheckpointKeyError, match=r"BLIP-2 checkpoint: 1 unexpected keys: t5_proj\.weight"):
        map_vision(eva, blip2 | {"t5_proj.weight": torch.zeros(1)}, vl)
    # A weight in the wrong file (audio in the VL file) is refused too, not silently taken.
    with pytest.raises(CheckpointKeyError, match=r"VL checkpoint: 1 unexpected keys: audio_query_tokens"):
        map_vision(eva, blip2, vl | {"audio_query_tokens": al["audio_query_tokens"]})
    with pytest.raises(CheckpointKeyError, match=r"AL checkpoint: 1 unexpected keys: llama_proj\.weight"):
        map_audio(al | {"llama_proj.weight": vl["llama_proj.weight"]})


def test_missing_and_misshapen_keys_are_named(source: tuple[VideoLlamaVision, VideoLlamaAudio]) -> None:
    eva, blip2, vl, al = _released(*source)
    no_bias = {k: v for k, v in vl.items() if k != "video_Qformer.bert.encoder.layer.1.output_query.dense.bias"}
    with pytest.raises(
        CheckpointKeyError,
        match=r"vision branch: 1 missing: video_Qformer\.bert\.encoder\.layer\.1\.output_query\.dense\.bias",
    ):
        check_branches(map_vision(eva, blip2, no_bias))
    with pytest.raises(CheckpointKeyError, match=r"missing key llama_proj\.weight"):
        check_branches(map_vision(eva, blip2, {k: v for k, v in vl.items() if k != "llama_proj.weight"}))
    # The AL projection for another LLM than the VL one.
    wrong = al | {
        "audio_llama_proj.weight": torch.zeros(512, TINY.qformer_hidden),
        "audio_llama_proj.bias": torch.zeros(512),
    }
    with pytest.raises(
        CheckpointKeyError, match=r"audio branch: 2 misshapen: audio_llama_proj\.bias \[512\] != \[256\]"
    ):
        check_branches(map_vision(eva, blip2, vl), map_audio(wrong))
    with pytest.raises(CheckpointKeyError, match="head size 88"):
        bad = {k: (v[..., :100] if k == "cls_token" else v) for k, v in eva.items()}
        check_branches(map_vision(bad, blip2, vl))
