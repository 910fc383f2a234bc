"""encoders.videollama against Video-LLaMA's facts: the checkpoint key names and shapes, parameter
counts, and every forward equal to a reference written here from the facts (read from upstream's
eva_vit.py, Qformer.py, blip2.py and video_llama.py at DAMO-NLP-SG/Video-LLaMA 64888c0) and to Transformers'
BLIP-2 classes loaded with the original names mapped (tests/videollama_oracle.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from encoders.imagebind import PRESETS as IMAGEBIND_PRESETS
from encoders.imagebind import ImageBindModel
from encoders.videollama import (
    PRESETS,
    VideoLlamaAudio,
    VideoLlamaConfig,
    VideoLlamaVision,
    half_like_original,
    imagebind_audio_clip_embeddings,
)
from tests.videollama_oracle import HFVideoLlama

pytestmark = pytest.mark.unit

TINY = PRESETS["tiny"]
# fp32 on the CPU: fused attention against the written-out softmax(QK^T)V rounds differently in the
# last bits, so a few ulps of the largest activations.
TOL = {"rtol": 1e-5, "atol": 2e-6}


@pytest.fixture(scope="module")
def vision() -> VideoLlamaVision:
    torch.manual_seed(0)
    model = VideoLlamaVision(TINY).eval()
    _randomise(model)
    return model


@pytest.fixture(scope="module")
def audio() -> VideoLlamaAudio:
    torch.manual_seed(1)
    model = VideoLlamaAudio(TINY).eval()
    _randomise(model)
    return model


@pytest.fixture(scope="module")
def imagebind() -> ImageBindModel:
    torch.manual_seed(2)
    return ImageBindModel(IMAGEBIND_PRESETS["tiny"]).eval()


def _randomise(model: torch.nn.Module) -> None:
    """Every parameter random, so no zero bias (q_bias, LayerNorm bias, ...) hides a wrong wiring."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.5 if name.endswith("LayerNorm.weight") or "norm" in name else 0.05
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _frames(batch: int, frames: int, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, frames, 224, 224, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# The reference, written from the facts with functional ops on the original state-dict names.
# ---------------------------------------------------------------------------------------------


def ref_eva_vit(sd: dict[str, Tensor], images: Tensor, heads: int) -> Tensor:
    """EVA ViT-g: conv patches (bias) + CLS + pos; pre-norm blocks (LayerNorm eps 1e-6), attention
    with q and v bias and no k bias, q scaled by head_dim ** -0.5 before QK^T, exact GELU MLP; no
    final norm."""
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat((sd["cls_token"].expand(x.shape[0], -1, -1), x), dim=1) + sd["pos_embed"]
    n, seq, width = x.shape
    hd = width // heads
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (width,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        bias = torch.cat((sd[p + "attn.q_bias"], torch.zeros_like(sd[p + "attn.v_bias"]), sd[p + "attn.v_bias"]))
        qkv = (h @ sd[p + "attn.qkv.weight"].T + bias).reshape(n, seq, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * hd**-0.5, qkv[1], qkv[2]
        ctx = ((q @ k.transpose(-2, -1)).softmax(dim=-1) @ v).transpose(1, 2).reshape(n, seq, width)
        x = x + ctx @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        h = F.layer_norm(x, (width,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return x


def ref_qformer(sd: dict[str, Tensor], queries: Tensor, states: Tensor, heads: int, cross_freq: int) -> Tensor:
    """BERT on queries alone (eps 1e-12): embeddings LayerNorm; per layer post-norm self-attention
    (scores / sqrt(head_dim), all-ones mask = + 0), cross-attention to ``states`` in layers
    i % cross_freq == 0, then the query feed-forward (intermediate_query, exact GELU, output_query)."""
    hidden = queries.shape[-1]

    def ln(x: Tensor, p: str) -> Tensor:
        return F.layer_norm(x, (hidden,), sd[p + ".weight"], sd[p + ".bias"], eps=1e-12)

    def lin(x: Tensor, p: str) -> Tensor:
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    def attention(x: Tensor, kv: Tensor, p: str) -> Tensor:
        def split(t: Tensor) -> Tensor:
            return t.view(t.shape[0], t.shape[1], heads, -1).permute(0, 2, 1, 3)

        q, k, v = split(lin(x, p + ".self.query")), split(lin(kv, p + ".self.key")), split(lin(kv, p + ".self.value"))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hidden // heads) + 0.0
        ctx = (scores.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(x.shape)
        return ln(lin(ctx, p + ".output.dense") + x, p + ".output.LayerNorm")

    x = ln(queries, "bert.embeddings.LayerNorm")
    layers = len({k.split(".")[3] for k in sd if k.startswith("bert.encoder.layer.")})
    for i in range(layers):
        p = f"bert.encoder.layer.{i}"
        x = attention(x, x, p + ".attention")
        if i % cross_freq == 0:
            x = attention(x, states, p + ".crossattention")
        x = ln(
            lin(F.gelu(lin(x, p + ".intermediate_query.dense")), p + ".output_query.dense") + x,
            p + ".output_query.LayerNorm",
        )
    return x


def _sub(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def ref_vision(sd: dict[str, Tensor], frames: Tensor, config: VideoLlamaConfig) -> Tensor:
    """video_llama.py encode_videoQformer_visual: 'b c t h w -> (b t) c h w'; ln_vision (eps 1e-5);
    Q-Former (32 queries); + frame position embedding per frame; 'b t q h -> b (t q) h'; video
    Q-Former; llama_proj."""
    b, _, t, h, w = frames.shape
    images = frames.permute(0, 2, 1, 3, 4).reshape(b * t, 3, h, w)
    vit = ref_eva_vit(_sub(sd, "visual_encoder."), images, config.vision_heads)
    image_embeds = F.layer_norm(vit, (vit.shape[-1],), sd["ln_vision.weight"], sd["ln_vision.bias"], eps=1e-5)
    q = ref_qformer(
        _sub(sd, "Qformer."), sd["query_tokens"].expand(b * t, -1, -1), image_embeds, config.qformer_heads, 2
    )
    pos = sd["video_frame_position_embedding.weight"][torch.arange(t)].unsqueeze(0).expand(b, -1, -1).unsqueeze(-2)
    q = (pos + q.reshape(b, t, q.shape[1], q.shape[2])).reshape(b, -1, q.shape[2])
    v = ref_qformer(_sub(sd, "video_Qformer."), sd["video_query_tokens"].expand(b, -1, -1), q, config.qformer_heads, 1)
    return v @ sd["llama_proj.weight"].T + sd["llama_proj.bias"]


def ref_audio(sd: dict[str, Tensor], clip_embeddings: Tensor, config: VideoLlamaConfig) -> Tensor:
    """video_llama.py encode_audioQformer: + audio position embedding 0..S-1; audio Q-Former
    (cross-attention every layer, 8 queries); audio_llama_proj."""
    b, n, _ = clip_embeddings.shape
    states = clip_embeddings + sd["audio_position_embedding.weight"][torch.arange(n)].unsqueeze(0)
    queries = sd["audio_query_tokens"].expand(b, -1, -1)
    out = ref_qformer(_sub(sd, "audio_Qformer."), queries, states, config.qformer_heads, 1)
    return out @ sd["audio_llama_proj.weight"].T + sd["audio_llama_proj.bias"]


# ---------------------------------------------------------------------------------------------
# Key names and shapes, listed from the facts (upstream's model code and its checkpoint saver).
# ---------------------------------------------------------------------------------------------


def _qformer_keys(
    prefix: str, c: VideoLlamaConfig, layers: int, cross_freq: int, kv: int
) -> dict[str, tuple[int, ...]]:
    d, m = c.qformer_hidden, c.qformer_intermediate
    keys: dict[str, tuple[int, ...]] = {
        f"{prefix}.bert.embeddings.position_ids": (1, 512),  # a persistent buffer, in every checkpoint
        f"{prefix}.bert.embeddings.LayerNorm.weight": (d,),
        f"{prefix}.bert.embeddings.LayerNorm.bias": (d,),
    }
    for i in range(layers):
        p = f"{prefix}.bert.encoder.layer.{i}"
        kinds = [("attention", d)] + ([("crossattention", kv)] if i % cross_freq == 0 else [])
        for kind, width in kinds:
            keys |= {f"{p}.{kind}.self.query.weight": (d, d), f"{p}.{kind}.self.query.bias": (d,)}
            keys |= {f"{p}.{kind}.self.{n}.weight": (d, width) for n in ("key", "value")}
            keys |= {f"{p}.{kind}.self.{n}.bias": (d,) for n in ("key", "value")}
            keys |= {f"{p}.{kind}.output.dense.weight": (d, d), f"{p}.{kind}.output.dense.bias": (d,)}
            keys |= {f"{p}.{kind}.output.LayerNorm.weight": (d,), f"{p}.{kind}.output.LayerNorm.bias": (d,)}
        keys |= {f"{p}.intermediate_query.dense.weight": (m, d), f"{p}.intermediate_query.dense.bias": (m,)}
        keys |= {f"{p}.output_query.dense.weight": (d, m), f"{p}.output_query.dense.bias": (d,)}
        keys |= {f"{p}.output_query.LayerNorm.weight": (d,), f"{p}.output_query.LayerNorm.bias": (d,)}
    return keys


def expected_vision_keys(c: VideoLlamaConfig) -> dict[str, tuple[int, ...]]:
    w, m = c.vision_width, c.vision_mlp_dim
    keys: dict[str, tuple[int, ...]] = {
        "visual_encoder.cls_token": (1, 1, w),
        "visual_encoder.pos_embed": (1, 257, w),
        "visual_encoder.patch_embed.proj.weight": (w, 3, 14, 14),
        "visual_encoder.patch_embed.proj.bias": (w,),
    }
    for i in range(c.vision_depth):
        p = f"visual_encoder.blocks.{i}"
        keys |= {f"{p}.norm1.weight": (w,), f"{p}.norm1.bias": (w,)}
        keys |= {f"{p}.attn.q_bias": (w,), f"{p}.attn.v_bias": (w,), f"{p}.attn.qkv.weight": (3 * w, w)}
        keys |= {f"{p}.attn.proj.weight": (w, w), f"{p}.attn.proj.bias": (w,)}
        keys |= {f"{p}.norm2.weight": (w,), f"{p}.norm2.bias": (w,)}
        keys |= {f"{p}.mlp.fc1.weight": (m, w), f"{p}.mlp.fc1.bias": (m,)}
        keys |= {f"{p}.mlp.fc2.weight": (w, m), f"{p}.mlp.fc2.bias": (w,)}
    d, h = c.qformer_hidden, c.llm_hidden_size
    keys |= {"ln_vision.weight": (w,), "ln_vision.bias": (w,), "query_tokens": (1, c.num_query_token, d)}
    keys |= _qformer_keys("Qformer", c, c.qformer_layers, 2, w)
    keys |= {"llama_proj.weight": (h, d), "llama_proj.bias": (h,)}
    keys |= {"video_frame_position_embedding.weight": (c.max_frame_pos, d)}
    keys |= {"video_query_tokens": (1, c.num_video_query_token, d)}
    keys |= _qformer_keys("video_Qformer", c, c.video_qformer_layers, 1, d)
    return keys


def expected_audio_keys(c: VideoLlamaConfig) -> dict[str, tuple[int, ...]]:
    d, h = c.qformer_hidden, c.llm_hidden_size
    keys: dict[str, tuple[int, ...]] = {"audio_query_tokens": (1, c.num_audio_query_token, d)}
    keys |= _qformer_keys("audio_Qformer", c, c.audio_qformer_layers, 1, 1024)
    keys |= {"audio_llama_proj.weight": (h, d), "audio_llama_proj.bias": (h,)}
    keys |= {"audio_position_embedding.weight": (8, 1024)}
    return keys


@pytest.mark.parametrize("preset", ["7b", "13b", "tiny"])
def test_state_dict_keys_and_shapes_are_the_originals(preset: str) -> None:
    c = PRESETS[preset]
    with torch.device("meta"):
        vision, audio = VideoLlamaVision(c), VideoLlamaAudio(c)
    assert {k: tuple(v.shape) for k, v in vision.state_dict().items()} == expected_vision_keys(c)
    assert {k: tuple(v.shape) for k, v in audio.state_dict().items()} == expected_audio_keys(c)
    # The only buffers are the Q-Formers' position ids; everything else is a parameter.
    buffers = {k for k, _ in vision.named_buffers()} | {k for k, _ in audio.named_buffers()}
    assert buffers == {f"{q}.bert.embeddings.position_ids" for q in ("Qformer", "video_Qformer", "audio_Qformer")}


def test_full_presets_are_the_released_shapes() -> None:
    for name, hidden in (("7b", 4096), ("13b", 5120)):
        c = PRESETS[name]
        assert c.llm_hidden_size == hidden
        assert (c.vision_width, c.vision_depth, c.vision_heads, c.vision_mlp_dim) == (1408, 39, 16, 6144)
        assert c.vision_mlp_dim == int(1408 * 4.3637)  # upstream's mlp_ratio
        assert (c.qformer_hidden, c.qformer_heads, c.qformer_intermediate, c.qformer_layers) == (768, 12, 3072, 12)
        assert (c.num_query_token, c.num_video_query_token, c.num_audio_query_token) == (32, 32, 8)
        assert (c.video_qformer_layers, c.audio_qformer_layers, c.max_frame_pos, c.max_audio_clips) == (2, 2, 32, 8)
    # Upstream's head sizes hold in every preset (the converter relies on them).
    for c in PRESETS.values():
        assert c.vision_width // c.vision_heads == 88 and c.qformer_hidden // c.qformer_heads == 64


# Trainable parameters of the released VL / AL checkpoints, derived from upstream's model code (fp32
# weights and Adam's two moments make the published file sizes): 22.10M / 22.89M, 22.86M / 23.64M
# for 7B / 13B.
RELEASED_TRAINABLE = {"7b": (22.10e6, 22.86e6), "13b": (22.89e6, 23.64e6)}


@pytest.mark.parametrize("preset", ["7b", "13b"])
def test_parameter_counts(preset: str) -> None:
    c = PRESETS[preset]
    with torch.device("meta"):
        vision, audio = VideoLlamaVision(c), VideoLlamaAudio(c)
    vl = sum(p.numel() for n, p in vision.named_parameters() if n.startswith(("video_", "llama_proj")))
    al = sum(p.numel() for p in audio.parameters())
    expected_vl, expected_al = RELEASED_TRAINABLE[preset]
    assert round(vl / 1e4) == round(expected_vl / 1e4)
    assert round(al / 1e4) == round(expected_al / 1e4)
    # EVA ViT-g with 39 of its 40 blocks: 25,248,768 per block + stem, CLS and 257 positions; the
    # 40-block model is EVA01-CLIP-g's ~1.0B.
    vit = sum(p.numel() for p in vision.visual_encoder.parameters())
    assert vit == 39 * 25_248_768 + (3 * 14 * 14 * 1408 + 1408) + 1408 + 257 * 1408 == 985_894_528
    assert round((vit + 25_248_768) / 1e9, 2) == 1.01


def test_config_round_trips_through_json() -> None:
    for c in PRESETS.values():
        assert VideoLlamaConfig(**json.loads(json.dumps(dataclasses.asdict(c)))) == c
    with pytest.raises(ValueError, match="divisible"):
        VideoLlamaConfig(vision_width=100, vision_heads=3)


# ---------------------------------------------------------------------------------------------
# Forward: equal to the reference from the facts, and to Transformers' BLIP-2 with mapped names.
# ---------------------------------------------------------------------------------------------


def _state(model: torch.nn.Module) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_eva_vit_equals_reference(vision: VideoLlamaVision) -> None:
    images = _frames(2, 1)[:, :, 0]
    with torch.no_grad():
        got = vision.visual_encoder(images)
    want = ref_eva_vit(_sub(_state(vision), "visual_encoder."), images, TINY.vision_heads)
    assert got.shape == (2, 257, TINY.vision_width)
    torch.testing.assert_close(got, want, **TOL)


def test_qformer_equals_reference(vision: VideoLlamaVision) -> None:
    g = torch.Generator().manual_seed(5)
    states = torch.randn(3, 257, TINY.vision_width, generator=g)
    queries = vision.query_tokens.detach().expand(3, -1, -1)
    with torch.no_grad():
        got = vision.Qformer(queries, states)
    want = ref_qformer(_sub(_state(vision), "Qformer."), queries, states, TINY.qformer_heads, 2)
    assert got.shape == (3, 32, TINY.qformer_hidden)
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("frames", [1, 8])
def test_vision_branch_equals_reference(vision: VideoLlamaVision, frames: int) -> None:
    video = _frames(2, frames, seed=frames)
    with torch.no_grad():
        got = vision(video)
    want = ref_vision(_state(vision), video, TINY)
    assert got.shape == (2, 32, TINY.llm_hidden_size)
    torch.testing.assert_close(got, want, **TOL)


def test_vision_branch_equals_transformers_blip2(vision: VideoLlamaVision) -> None:
    video = _frames(1, 3, seed=7)
    hf = HFVideoLlama(_state(vision), TINY.vision_heads, TINY.qformer_heads)
    with torch.no_grad():
        ours = vision(video)
    want = ref_vision(_state(vision), video, TINY)
    torch.testing.assert_close(hf.video(video), want, **TOL)
    torch.testing.assert_close(ours, hf.video(video), **TOL)


def test_image_is_a_one_frame_video(vision: VideoLlamaVision) -> None:
    images = _frames(2, 1, seed=9)[:, :, 0]
    with torch.no_grad():
        as_images = vision.encode_images(images)
        as_video = vision(images.unsqueeze(2))
    assert as_images.shape == (2, 32, TINY.llm_hidden_size)
    torch.testing.assert_close(as_images, as_video, rtol=0, atol=0)


def test_frame_order_and_positions_matter(vision: VideoLlamaVision) -> None:
    """The frame position embedding makes the output depend on frame order; batches are independent."""
    video = _frames(2, 4, seed=11)
    with torch.no_grad():
        batched = vision(video)
        singles = torch.cat([vision(video[i : i + 1]) for i in range(2)])
        reversed_frames = vision(video.flip(2))
    torch.testing.assert_close(batched, singles, **TOL)
    assert (batched - reversed_frames).abs().max() > 1e-3


def test_vision_input_limits(vision: VideoLlamaVision) -> None:
    with torch.no_grad():
        assert vision(_frames(1, 32)).shape == (1, 32, TINY.llm_hidden_size)  # max_frame_pos frames
        with pytest.raises(ValueError, match="1 to 32 frames"):
            vision(_frames(1, 33))
        with pytest.raises(ValueError, match="224"):
            vision(torch.zeros(1, 3, 2, 112, 112))
        with pytest.raises(ValueError, match="224"):
            vision.visual_encoder(torch.zeros(1, 3, 112, 112))


def test_imagebind_clip_embeddings_are_per_clip_normalised_x20(imagebind: ImageBindModel) -> None:
    mel = torch.randn(2, 8, 1, 128, 204, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = imagebind_audio_clip_embeddings(imagebind, mel)
        # Upstream: normalise, then x clip(exp(log(20)), max=100); one vector per clip, in order.
        scale = torch.clamp(torch.full((), math.log(20.0)).exp(), max=100.0)
        want = torch.stack([scale * imagebind.embed("audio", mel[:, i]) for i in range(8)], dim=1)
        averaged = imagebind({"audio": mel})["audio"]  # PandaGPT's path: the clips averaged
    assert got.shape == (2, 8, 1024)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.full((2, 8), 20.0), rtol=0, atol=1e-4)
    assert not torch.allclose(got.mean(dim=1), averaged)  # x20, so not PandaGPT's unit vectors


@pytest.mark.parametrize("clips", [1, 8])
def test_audio_branch_equals_reference_and_transformers(audio: VideoLlamaAudio, clips: int) -> None:
    clip_embeddings = 20 * F.normalize(torch.randn(2, clips, 1024, generator=torch.Generator().manual_seed(4)), dim=-1)
    with torch.no_grad():
        got = audio(clip_embeddings)
    want = ref_audio(_state(audio), clip_embeddings, TINY)
    hf = HFVideoLlama(_state(audio), TINY.vision_heads, TINY.qformer_heads)
    assert got.shape == (2, 8, TINY.llm_hidden_size)
    torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(hf.audio(clip_embeddings), want, **TOL)


def test_audio_from_mel_end_to_end(audio: VideoLlamaAudio, imagebind: ImageBindModel) -> None:
    mel = torch.randn(1, 8, 1, 128, 204, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = audio(imagebind_audio_clip_embeddings(imagebind, mel))
    assert got.shape == (1, 8, TINY.llm_hidden_size) and torch.isfinite(got).all()
    with pytest.raises(ValueError, match="1 to 8 clips"):
        audio(torch.zeros(1, 9, 1024))
    with pytest.raises(ValueError, match="1024"):
        audio(torch.zeros(1, 8, 768))


def test_strict_round_trip_through_state_dicts(vision: VideoLlamaVision, audio: VideoLlamaAudio) -> None:
    with torch.device("meta"):
        vision2, audio2 = VideoLlamaVision(TINY), VideoLlamaAudio(TINY)
    vision2.load_state_dict(vision.state_dict(), strict=True, assign=True)
    audio2.load_state_dict(audio.state_dict(), strict=True, assign=True)
    video, clips = _frames(1, 2, seed=8), torch.randn(1, 8, 1024)
    with torch.no_grad():
        torch.testing.assert_close(vision2.eval()(video), vision(video), rtol=0, atol=0)
        torch.testing.assert_close(audio2.eval()(clips), audio(clips), rtol=0, atol=0)


def test_half_like_original_keeps_norms_and_embeddings_fp32(vision: VideoLlamaVision) -> None:
    """Upstream's convert_weights_to_fp16 halves only Conv2d/Linear weights and biases (eva_vit.py 397-412)."""
    vit = half_like_original(VideoLlamaVision(TINY).visual_encoder)
    dtypes = {k: v.dtype for k, v in vit.state_dict().items()}
    fp32 = {k for k, d in dtypes.items() if d == torch.float32}
    assert fp32 == {
        k for k in dtypes if k in ("cls_token", "pos_embed") or "norm" in k or k.endswith(("q_bias", "v_bias"))
    }
    assert all(d == torch.float16 for k, d in dtypes.items() if k not in fp32)


def test_fp16_like_the_original_keeps_an_fp32_residual_stream() -> None:
    """With the ViT halved and the forward under fp16 autocast (upstream's maybe_autocast), the
    patches are fp16 but CLS and positions fp32: the residual stream is promoted to fp32, the soft
    prompts come out fp16, and they stay close to the fp32 result. (CPU autocast here; no GPU.)"""
    torch.manual_seed(0)
    model = VideoLlamaVision(TINY).eval()
    video = _frames(1, 2, seed=12)
    with torch.no_grad():
        fp32 = model(video)
        half_like_original(model.visual_encoder)
        with torch.autocast("cpu", dtype=torch.float16):
            tokens = model.visual_encoder(video[:, :, 0])
            fp16 = model(video)
    assert tokens.dtype == torch.float32 and fp16.dtype == torch.float16
    torch.testing.assert_close(fp16.float(), fp32, rtol=0, atol=5e-3)
