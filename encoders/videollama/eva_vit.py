"""EVA-CLIP ViT-g/14 as Video-LLaMA builds it (LAVIS's ``create_eva_vit_g``).

Attribute names are the checkpoint's keys (``eva_vit_g.pth`` is this module's bare state dict, and
Video-LLaMA stores it under ``visual_encoder.``): ``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.N.{norm1, attn.{q_bias, v_bias, qkv, proj}, norm2, mlp.{fc1, fc2}}``.
Upstream's options that Video-LLaMA leaves off are not built: no relative position bias, no
LayerScale (``gamma_1/2``), no final norm, no head, no pooling. Dropout and stochastic depth are
inference no-ops and are left out too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.imagebind.layers import init_trunk_weights

from .config import IMAGE_SIZE, PATCH_SIZE, VideoLlamaConfig

# Upstream's norm_layer for the ViT is partial(nn.LayerNorm, eps=1e-6).
VIT_LN_EPS = 1e-6


class PatchEmbed(nn.Module):
    """Non-overlapping 14x14 patches -> (N, 256, D). The convolution has a bias (unlike ImageBind's)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention whose packed qkv projection has a bias on q and v but none on k."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        # Own parameters are listed before children in a state dict: q_bias, v_bias, qkv, proj.
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        n, seq, width = x.shape
        # The key's bias is a zero block, so the key projection is bias-free, as upstream builds it.
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.view(n, seq, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as upstream
        return self.proj(out.transpose(1, 2).reshape(n, seq, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block, no LayerScale."""

    def __init__(self, width: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=VIT_LN_EPS)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=VIT_LN_EPS)
        self.mlp = Mlp(width, mlp_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaViT(nn.Module):
    """(N, 3, 224, 224) normalised images -> (N, 257, width) tokens of the last built block."""

    def __init__(self, config: VideoLlamaConfig) -> None:
        super().__init__()
        width = config.vision_width
        num_patches = (IMAGE_SIZE // PATCH_SIZE) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, width))
        self.patch_embed = PatchEmbed(width)
        self.blocks = nn.ModuleList(
            Block(width, config.vision_heads, config.vision_mlp_dim) for _ in range(config.vision_depth)
        )
        self.apply(init_trunk_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"EVA ViT input must be (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(images.shape)}")
        patches = self.patch_embed(images)
        # Under fp16 autocast the patches are fp16 and cls/pos fp32: cat and add promote, so the
        # residual stream stays fp32 while every Linear runs in fp16, exactly as upstream.
        x = torch.cat((self.cls_token.expand(patches.shape[0], -1, -1), patches), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return x


def half_like_original(vit: EvaViT) -> EvaViT:
    """Upstream's ``convert_weights_to_fp16``: Conv2d and Linear weights and biases to fp16, in place.

    LayerNorms, ``cls_token``, ``pos_embed``, ``q_bias`` and ``v_bias`` stay fp32. Run the forward
    under ``torch.autocast("cuda", dtype=torch.float16)`` (upstream's ``maybe_autocast``) to get the
    original's numerics: fp16 matmuls, fp32 LayerNorms and an fp32 residual stream.
    """
    for module in vit.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.half()
    return vit
