"""Tests for encoders.imagebind: checkpoint layout, shapes, postprocessing, clip
averaging, strict save/load, and an independent hand-written block reference."""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from encoders.imagebind import PRESETS, ImageBindConfig, ImageBindModel, load_imagebind

pytestmark = pytest.mark.unit

KEYS_TSV = Path(__file__).resolve().parents[1] / "data" / "imagebind_huge_keys.tsv"
HUGE_PARAM_COUNT = 1_200_781_057
OUT_DIM = 1024


def _tiny_inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, 1000, (batch, 77), generator=g)
    text[:, 5] = 49407  # EOT: the largest id, picked by argmax
    return {
        "vision": torch.randn(batch, 3, 224, 224, generator=g),
        "text": text,
        "audio": torch.randn(batch, 3, 1, 128, 204, generator=g),
        "depth": torch.randn(batch, 1, 224, 224, generator=g),
        "thermal": torch.randn(batch, 1, 224, 224, generator=g),
        "imu": torch.randn(batch, 6, 2000, generator=g),
    }


@pytest.fixture(scope="module")
def tiny() -> ImageBindModel:
    torch.manual_seed(0)
    return ImageBindModel(PRESETS["tiny"]).eval()


def test_huge_state_dict_matches_checkpoint_layout() -> None:
    expected = []
    for line in KEYS_TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, kind = line.split("\t")
        expected.append((key, tuple(ast.literal_eval(shape)), kind))
    assert len(expected) == 1311

    with torch.device("meta"):  # no 4.8 GB allocation
        model = ImageBindModel(PRESETS["huge"])
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    got = [
        (k, tuple(v.shape), "param" if k in params else "buffer" if k in buffers else "?")
        for k, v in model.state_dict().items()
    ]
    assert [g[0] for g in got] == [e[0] for e in expected]  # keys and order
    assert got == expected  # shapes and param/buffer kind
    assert sum(p.numel() for p in model.parameters()) == HUGE_PARAM_COUNT


def test_config_round_trips_through_json() -> None:
    for cfg in PRESETS.values():
        d = dataclasses.asdict(cfg)
        assert ImageBindConfig(**d) == cfg
        again = ImageBindConfig(**json.loads(json.dumps(d)))  # tuples come back as lists
        assert again == cfg and isinstance(again.kernel_size, tuple)
    assert ImageBindConfig().kernel_size == (2, 14, 14)
    assert ImageBindConfig().out_embed_dim == 768


def test_tiny_is_small() -> None:
    model = ImageBindModel(PRESETS["tiny"])
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert nbytes < 12 * 2**20


def test_tiny_forward_shapes(tiny: ImageBindModel) -> None:
    with torch.no_grad():
        out = tiny(_tiny_inputs(batch=2))
    assert set(out) == {"vision", "text", "audio", "depth", "thermal", "imu"}
    for m, emb in out.items():
        assert emb.shape == (2, OUT_DIM), m
        assert torch.isfinite(emb).all(), m


def test_video_clips_and_image_repeat(tiny: ImageBindModel) -> None:
    img = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        as_image = tiny({"vision": img})["vision"]
        # An image is repeated to video_frames frames; the explicit clip must match.
        clip = img.unsqueeze(2).repeat(1, 1, 2, 1, 1)
        as_clip = tiny.embed("vision", clip)
        video = tiny({"vision": torch.randn(2, 3, 3, 2, 224, 224)})["vision"]
    torch.testing.assert_close(as_image, as_clip)
    assert video.shape == (2, OUT_DIM)


def test_postprocessor_scales(tiny: ImageBindModel) -> None:
    x = _tiny_inputs(batch=2)
    x["audio"] = x["audio"][:, 0]  # single clip: no averaging, so norms are exact
    with torch.no_grad():
        out = tiny(x)
    norms = {m: out[m].norm(dim=-1) for m in out}
    expected = {"vision": 1.0, "audio": 1.0, "thermal": 10.0, "depth": 5.0, "imu": 5.0, "text": 1 / 0.07}
    for m, value in expected.items():
        torch.testing.assert_close(norms[m], torch.full_like(norms[m], value), rtol=1e-5, atol=1e-5)
    # The audio x20 buffer is kept for strict loading but not applied (PandaGPT).
    assert torch.isclose(tiny.modality_postprocessors["audio"][1].log_logit_scale, torch.tensor(math.log(20.0)))


def test_clip_mean_after_postprocessor(tiny: ImageBindModel) -> None:
    audio = torch.randn(1, 3, 1, 128, 204)
    thermal = torch.randn(1, 3, 1, 224, 224)
    with torch.no_grad():
        batched = tiny({"audio": audio, "thermal": thermal})
        singles = [tiny({"audio": audio[:, i], "thermal": thermal[:, i]}) for i in range(3)]
    for m in ("audio", "thermal"):
        mean = torch.stack([s[m] for s in singles]).mean(dim=0)
        torch.testing.assert_close(batched[m], mean, rtol=1e-5, atol=1e-5)
    # Mean of distinct unit/10-norm vectors is shorter: it was not re-normalised.
    assert batched["audio"].norm() < 0.999
    assert batched["thermal"].norm() < 9.99


def test_strict_save_load_round_trip(tiny: ImageBindModel, tmp_path: Path) -> None:
    path = tmp_path / "imagebind_tiny.pth"
    torch.save(tiny.state_dict(), path)
    loaded = load_imagebind(path, PRESETS["tiny"], device="cpu", dtype=torch.float32)
    assert not loaded.training
    assert all(not p.requires_grad for p in loaded.parameters())
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    x = _tiny_inputs(batch=1, seed=3)
    with torch.no_grad():
        a, b = tiny(x), loaded(x)
    for m in a:
        torch.testing.assert_close(a[m], b[m], rtol=0, atol=0)

    # Strictness: a missing key must fail.
    sd = tiny.state_dict()
    sd.pop("modality_postprocessors.imu.1.log_logit_scale")
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_imagebind(tmp_path / "broken.pth", PRESETS["tiny"])


def test_rejects_wrong_geometry(tiny: ImageBindModel) -> None:
    bad = {
        "vision": torch.randn(1, 3, 112, 112),
        "audio": torch.randn(1, 1, 128, 100),
        "depth": torch.randn(1, 3, 224, 224),
        "imu": torch.randn(1, 6, 1000),
        "text": torch.zeros(1, 50, dtype=torch.long),
    }
    for m, x in bad.items():
        with pytest.raises(ValueError, match=m):
            tiny({m: x})
    with pytest.raises(ValueError, match="modality"):
        tiny({"smell": torch.zeros(1, 3)})


# ---------------------------------------------------------------------------
# Independent reference: one trunk block written out with functional ops.
# ---------------------------------------------------------------------------


def _reference_block(blk: torch.nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
    """x: (L, B, D) sequence-first. Pre-norm block, eps 1e-6, torch MHA semantics."""
    sd = {k: v.detach() for k, v in blk.state_dict().items()}
    seq, bsz, dim = x.shape
    heads = blk.attn.num_heads
    hd = dim // heads

    h = F.layer_norm(x, (dim,), sd["norm_1.weight"], sd["norm_1.bias"], eps=1e-6)
    wq, wk, wv = sd["attn.in_proj_weight"].chunk(3, dim=0)
    bq, bk, bv = sd["attn.in_proj_bias"].chunk(3, dim=0)
    q, k, v = h @ wq.T + bq, h @ wk.T + bk, h @ wv.T + bv
    if "attn.bias_k" in sd:  # one extra learned key/value position, appended at the end
        k = torch.cat([k, sd["attn.bias_k"].expand(1, bsz, dim)], dim=0)
        v = torch.cat([v, sd["attn.bias_v"].expand(1, bsz, dim)], dim=0)
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (0, 1))

    def split(t: torch.Tensor) -> torch.Tensor:  # (S, B, D) -> (B, H, S, hd)
        return t.reshape(t.shape[0], bsz, heads, hd).permute(1, 2, 0, 3)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if attn_mask is not None:
        scores = scores + attn_mask
    ctx = scores.softmax(dim=-1) @ v  # (B, H, L, hd)
    ctx = ctx.permute(2, 0, 1, 3).reshape(seq, bsz, dim)
    x = x + ctx @ sd["attn.out_proj.weight"].T + sd["attn.out_proj.bias"]

    h = F.layer_norm(x, (dim,), sd["norm_2.weight"], sd["norm_2.bias"], eps=1e-6)
    h = F.gelu(h @ sd["mlp.fc1.weight"].T + sd["mlp.fc1.bias"])
    return x + h @ sd["mlp.fc2.weight"].T + sd["mlp.fc2.bias"]


@pytest.mark.parametrize("modality", ["audio", "text", "vision"])
def test_block_matches_functional_reference(tiny: ImageBindModel, modality: str) -> None:
    trunk = tiny.modality_trunks[modality]
    blk = trunk.blocks[0]
    assert (blk.attn.bias_k is not None) == (modality == "audio")
    # A copy of the tiny block with every tensor randomised: the freshly initialised
    # zero biases / unit LayerNorms would leave parts of the computation untested.
    g = torch.Generator().manual_seed(1)
    ref_block = copy.deepcopy(blk)
    with torch.no_grad():
        for p in ref_block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    ref_block.eval()
    dim = ref_block.norm_1.normalized_shape[0]
    seq = 77 if modality == "text" else 13
    x = torch.randn(seq, 3, dim, generator=g)
    mask = tiny.modality_preprocessors["text"].mask if modality == "text" else None
    with torch.no_grad():
        got = ref_block(x, attn_mask=mask)
        want = _reference_block(ref_block, x, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_text_mask_and_eot_head(tiny: ImageBindModel) -> None:
    mask = tiny.modality_preprocessors["text"].mask
    assert mask.shape == (77, 77)
    assert torch.equal(mask, torch.full((77, 77), float("-inf")).triu(1))
    # Causality: tokens after EOT cannot change the embedding (EOT attends only backwards).
    ids = torch.randint(1, 1000, (1, 77))
    ids[0, 10] = 49407
    other = ids.clone()
    other[0, 11:] = torch.randint(1, 1000, (66,))
    with torch.no_grad():
        a = tiny({"text": ids})["text"]
        b = tiny({"text": other})["text"]
    torch.testing.assert_close(a, b)
