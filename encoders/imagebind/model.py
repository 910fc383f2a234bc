"""ImageBindModel: six modality encoders into one joint embedding space.

Layout (and therefore state-dict keys) follows upstream ImageBind so that
``imagebind_huge.pth`` loads strictly:

    modality_preprocessors.<m>   raw input -> tokens      (stems.py)
    modality_trunks.<m>          transformer blocks       (layers.Trunk)
    modality_heads.<m>           LayerNorm, pick token, Linear -> out_embed_dim
    modality_postprocessors.<m>  L2 normalise (+ fixed/learned logit scale)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .config import (
    IMAGE_SIZE,
    IMU_CHANNELS,
    IMU_LENGTH,
    TEXT_CONTEXT_LENGTH,
    TEXT_VOCAB_SIZE,
    ImageBindConfig,
)
from .layers import TRUNK_LN_EPS, LogitScale, Normalize, SelectElement, SelectEOSAndProject, Trunk
from .stems import (
    IMUPreprocessor,
    PadIm2Video,
    PatchConv3d,
    PatchEmbed,
    PatchPreprocessor,
    TextPreprocessor,
    VisionPreprocessor,
    conv_out,
)

# Checkpoint order of the ModuleDict entries.
MODALITIES = ("vision", "text", "audio", "depth", "thermal", "imu")


def _image_stem(dim: int, kernel: int) -> PatchEmbed:
    """Single-channel 224x224 stem shared by depth and thermal (stride = kernel)."""
    conv = nn.Conv2d(1, dim, kernel_size=kernel, stride=kernel, bias=False)
    return PatchEmbed(conv, nn.LayerNorm(dim, eps=1e-5))


def _build_preprocessors(c: ImageBindConfig) -> nn.ModuleDict:
    kt, kh, kw = c.kernel_size
    vision_patches = (c.video_frames // kt) * (IMAGE_SIZE // kh) * (IMAGE_SIZE // kw)
    vision_stem = PatchEmbed(
        nn.Sequential(
            PadIm2Video(ntimes=c.video_frames),
            PatchConv3d(3, c.vision_embed_dim, kernel_size=c.kernel_size, stride=c.kernel_size, bias=False),
        )
    )
    audio_stem = PatchEmbed(
        nn.Conv2d(1, c.audio_embed_dim, kernel_size=c.audio_kernel_size, stride=c.audio_stride, bias=False),
        nn.LayerNorm(c.audio_embed_dim, eps=1e-5),
    )
    audio_patches = conv_out(c.audio_num_mel_bins, c.audio_kernel_size, c.audio_stride) * conv_out(
        c.audio_target_len, c.audio_kernel_size, c.audio_stride
    )
    depth_patches = (IMAGE_SIZE // c.depth_kernel_size) ** 2
    thermal_patches = (IMAGE_SIZE // c.thermal_kernel_size) ** 2
    img1 = (1, IMAGE_SIZE, IMAGE_SIZE)
    return nn.ModuleDict(
        {
            "vision": VisionPreprocessor(
                "vision",
                "rgbt_stem",
                vision_stem,
                (3, c.video_frames, IMAGE_SIZE, IMAGE_SIZE),
                vision_patches,
                c.vision_embed_dim,
            ),
            "text": TextPreprocessor(TEXT_VOCAB_SIZE, TEXT_CONTEXT_LENGTH, c.text_embed_dim),
            "audio": PatchPreprocessor(
                "audio",
                "rgbt_stem",
                audio_stem,
                (1, c.audio_num_mel_bins, c.audio_target_len),
                audio_patches,
                c.audio_embed_dim,
            ),
            "depth": PatchPreprocessor(
                "depth",
                "depth_stem",
                _image_stem(c.depth_embed_dim, c.depth_kernel_size),
                img1,
                depth_patches,
                c.depth_embed_dim,
            ),
            "thermal": PatchPreprocessor(
                "thermal",
                "rgbt_stem",
                _image_stem(c.thermal_embed_dim, c.thermal_kernel_size),
                img1,
                thermal_patches,
                c.thermal_embed_dim,
            ),
            "imu": IMUPreprocessor(IMU_CHANNELS, IMU_LENGTH, c.imu_kernel_size, c.imu_embed_dim),
        }
    )


def _build_trunks(c: ImageBindConfig) -> nn.ModuleDict:
    # (dim, blocks, heads, drop_path, pre-LN, add_bias_kv) per upstream instantiate_trunk calls:
    # only vision has the pre-transformer LayerNorm; vision/text have no bias_k/bias_v.
    spec = {
        "vision": (c.vision_embed_dim, c.vision_num_blocks, c.vision_num_heads, 0.0, True, False),
        "text": (c.text_embed_dim, c.text_num_blocks, c.text_num_heads, 0.0, False, False),
        "audio": (c.audio_embed_dim, c.audio_num_blocks, c.audio_num_heads, c.audio_drop_path, False, True),
        "depth": (c.depth_embed_dim, c.depth_num_blocks, c.depth_num_heads, c.depth_drop_path, False, True),
        "thermal": (
            c.thermal_embed_dim,
            c.thermal_num_blocks,
            c.thermal_num_heads,
            c.thermal_drop_path,
            False,
            True,
        ),
        "imu": (c.imu_embed_dim, c.imu_num_blocks, c.imu_num_heads, c.imu_drop_path, False, True),
    }
    return nn.ModuleDict({m: Trunk(*spec[m]) for m in MODALITIES})


def _cls_head(dim: int, out: int, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = [nn.LayerNorm(dim, eps=TRUNK_LN_EPS), SelectElement(index=0)]
    if dropout > 0.0:
        # IMU only: upstream puts Dropout(0.5) at index 2, shifting the Linear to index 3.
        layers.append(nn.Dropout(p=dropout))
    layers.append(nn.Linear(dim, out, bias=False))
    return nn.Sequential(*layers)


def _build_heads(c: ImageBindConfig) -> nn.ModuleDict:
    out = c.out_embed_dim
    text_proj = nn.Sequential(
        nn.LayerNorm(c.text_embed_dim, eps=TRUNK_LN_EPS), nn.Linear(c.text_embed_dim, out, bias=False)
    )
    return nn.ModuleDict(
        {
            "vision": _cls_head(c.vision_embed_dim, out),
            "text": SelectEOSAndProject(proj=text_proj),
            "audio": _cls_head(c.audio_embed_dim, out),
            "depth": _cls_head(c.depth_embed_dim, out),
            "thermal": _cls_head(c.thermal_embed_dim, out),
            "imu": _cls_head(c.imu_embed_dim, out, dropout=0.5),
        }
    )


def _build_postprocessors() -> nn.ModuleDict:
    def fixed(scale: float, enabled: bool = True) -> nn.Sequential:
        return nn.Sequential(Normalize(dim=-1), LogitScale(scale, learnable=False, enabled=enabled))

    return nn.ModuleDict(
        {
            "vision": Normalize(dim=-1),
            "text": nn.Sequential(Normalize(dim=-1), LogitScale(learnable=True)),
            # PandaGPT's ImageBind copy L2-normalises audio WITHOUT upstream's x20:
            # the projector was trained on unit-norm audio embeddings. The buffer
            # stays (the checkpoint has it; strict loading needs it) but is not applied.
            "audio": fixed(20.0, enabled=False),
            "depth": fixed(5.0),
            "thermal": fixed(10.0),
            "imu": fixed(5.0),
        }
    )


class ImageBindModel(nn.Module):
    def __init__(self, config: ImageBindConfig) -> None:
        super().__init__()
        self.config = config
        self.modality_preprocessors = _build_preprocessors(config)
        self.modality_trunks = _build_trunks(config)
        self.modality_heads = _build_heads(config)
        self.modality_postprocessors = _build_postprocessors()

    def embed(self, modality: str, x: Tensor) -> Tensor:
        """One modality, one input per row (no clip dimension) -> (B, out_embed_dim)."""
        if modality not in self.modality_preprocessors:
            raise ValueError(f"unknown ImageBind modality {modality!r}; expected one of {MODALITIES}")
        prep = self.modality_preprocessors[modality](x)
        tokens = self.modality_trunks[modality](**prep["trunk"])
        out = self.modality_heads[modality](tokens, **prep["head"])
        return self.modality_postprocessors[modality](out)

    def forward(self, inputs: Mapping[str, Tensor | None]) -> dict[str, Tensor]:
        """dict modality -> input; returns dict modality -> (B, out_embed_dim).

        Inputs with ndim >= 5 are (batch, clips, ...): every clip is embedded and
        the clip embeddings are averaged AFTER the postprocessor (not re-normalised),
        as upstream does. So images are (B, 3, 224, 224), videos (B, S, 3, T, 224, 224),
        audio (B, S, 1, 128, 204), depth/thermal (B, 1, 224, 224), IMU (B, 6, 2000),
        text (B, 77) token ids.
        """
        outputs: dict[str, Tensor] = {}
        for modality, x in inputs.items():
            if x is None:
                continue
            if x.ndim >= 5:
                b, s = x.shape[:2]
                emb = self.embed(modality, x.reshape(b * s, *x.shape[2:]))
                outputs[modality] = emb.reshape(b, s, -1).mean(dim=1)
            else:
                outputs[modality] = self.embed(modality, x)
        return outputs


def load_imagebind(
    path: str | os.PathLike[str],
    config: ImageBindConfig,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ImageBindModel:
    """Strictly load an ImageBind checkpoint (e.g. imagebind_huge.pth) for inference.

    The model is built on the meta device and the memory-mapped checkpoint tensors
    are assigned into it, so the 4.8 GB huge model is never allocated twice.
    """
    with torch.device("meta"):
        model = ImageBindModel(config)
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
