"""Modality preprocessors: raw input -> (B, N, D) tokens (+ kwargs for trunk/head).

Each preprocessor returns ``{"trunk": {...}, "head": {...}}`` like upstream, so
the text modality can hand its causal mask to the trunk and its EOT positions to
the head without special cases in the model.

Input geometry is fixed by the checkpoint's learned position embeddings; we do
not interpolate them, so any other input shape is rejected with a ValueError.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

TokenDict = dict[str, dict[str, Tensor]]


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output length of an unpadded convolution."""
    return (size - kernel) // stride + 1


def _check_shape(name: str, x: Tensor, expected: Sequence[int]) -> None:
    if tuple(x.shape[1:]) != tuple(expected):
        raise ValueError(
            f"ImageBind {name} input must have shape (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
        )


class PadIm2Video(nn.Module):
    """Turn an image (B, C, H, W) into a clip (B, C, T, H, W) by repeating it T times.

    A 5-D clip with more than one frame passes through untouched; a single-frame
    clip is repeated too (upstream behaviour). Parameter-free, but it occupies
    index 0 of ``rgbt_stem.proj`` so the Conv3d lands at the checkpoint key ``proj.1``.
    """

    def __init__(self, ntimes: int, time_dim: int = 2) -> None:
        super().__init__()
        self.ntimes = ntimes
        self.time_dim = time_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(self.time_dim)
        if x.shape[self.time_dim] == 1:
            reps = [1] * x.ndim
            reps[self.time_dim] = self.ntimes
            x = x.repeat(reps)
        return x


class PatchConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose stride equals its kernel (no padding, no bias), on CUDA as one matmul.

    Such a convolution is a linear map of each non-overlapping (kt, kh, kw) patch. cuDNN has
    no fast kernel for the vision stem's shape: it picks a generic implicit-GEMM kernel
    that took 3.9 ms per 128 images in bf16 on an H100, against 0.4 ms for the same
    products as a matmul. On the CPU the convolution itself runs, so CPU results stay
    bit-for-bit those of ``nn.Conv3d``. Same parameter (``weight``), so the same key.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_cuda:
            return super().forward(x)
        kt, kh, kw = self.kernel_size
        b, c, t, h, w = x.shape  # validated before the stem: the kernel divides T, H and W
        # (B, C, T, H, W) -> (B, T', H', W', C*kt*kh*kw), a patch flattened in the weight's order.
        patches = x.reshape(b, c, t // kt, kt, h // kh, kh, w // kw, kw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        patches = patches.reshape(b, t // kt, h // kh, w // kw, c * kt * kh * kw)
        out = patches @ self.weight.reshape(self.out_channels, -1).t()
        return out.permute(0, 4, 1, 2, 3)  # (B, out, T', H', W'), as Conv3d returns it


class PatchEmbed(nn.Module):
    """Upstream ``PatchEmbedGeneric``: conv patchify, flatten to (B, N, D), optional LayerNorm."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None) -> None:
        super().__init__()
        self.proj = proj
        # Identity has no parameters, so the vision stem's keys are unaffected.
        self.norm_layer = norm_layer if norm_layer is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm_layer(self.proj(x).flatten(2).transpose(1, 2))


class PosEmbeddingHelper(nn.Module):
    """Holds the learned position embedding (key ``pos_embedding_helper.pos_embed``)."""

    def __init__(self, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)


class PatchPreprocessor(nn.Module):
    """Vision / audio / depth / thermal: stem -> prepend CLS -> add position embedding.

    ``stem_name`` is the checkpoint attribute name: ``depth_stem`` for depth,
    ``rgbt_stem`` for everything else (upstream's RGBDTPreprocessor has both
    slots and uses one).
    """

    def __init__(
        self,
        name: str,
        stem_name: str,
        stem: PatchEmbed,
        input_shape: Sequence[int],
        num_patches: int,
        dim: int,
    ) -> None:
        super().__init__()
        self.name = name
        self.stem_name = stem_name
        self.input_shape = tuple(input_shape)
        # Own parameter first: it is listed before the stem in the checkpoint.
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.cls_token, std=0.02)
        self.add_module(stem_name, stem)
        self.pos_embedding_helper = PosEmbeddingHelper(num_patches + 1, dim)

    def prepare(self, x: Tensor) -> Tensor:
        """Validate the raw input; the vision subclass pads images to clips first."""
        _check_shape(self.name, x, self.input_shape)
        return x

    def forward(self, x: Tensor) -> TokenDict:
        x = self.prepare(x)
        tokens = getattr(self, self.stem_name)(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1) + self.pos_embedding_helper.pos_embed
        return {"trunk": {"tokens": tokens}, "head": {}}


class VisionPreprocessor(PatchPreprocessor):
    def prepare(self, x: Tensor) -> Tensor:
        if x.ndim not in (4, 5):
            raise ValueError(f"ImageBind vision input must be (B, 3, H, W) or (B, 3, T, H, W), got {tuple(x.shape)}")
        # Pad before validating so images and (B, 3, T, H, W) clips are checked alike.
        pad = getattr(self, self.stem_name).proj[0]
        return super().prepare(pad(x))


class TextPreprocessor(nn.Module):
    """Token embedding + learned position embedding; provides the causal mask and EOT index."""

    def __init__(self, vocab_size: int, context_length: int, dim: int) -> None:
        super().__init__()
        self.context_length = context_length
        self.pos_embed = nn.Parameter(torch.empty(1, context_length, dim))
        # Additive attention mask: -inf strictly above the diagonal (causal).
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("mask", mask)
        self.token_embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward(self, text: Tensor) -> TokenDict:
        _check_shape("text", text, (self.context_length,))
        if text.is_floating_point() or text.is_complex():
            raise ValueError(f"ImageBind text input must be integer token ids, got {text.dtype}")
        tokens = self.token_embedding(text) + self.pos_embed
        # The CLIP tokenizer's EOT id (49407) is the largest id, so argmax finds it.
        return {
            "trunk": {"tokens": tokens, "attn_mask": self.mask.to(tokens.dtype)},
            "head": {"seq_len": text.argmax(dim=-1)},
        }


class IMUPreprocessor(nn.Module):
    """(B, 6, 2000) -> 250 windows of 8 samples -> Linear+LayerNorm tokens, CLS, pos."""

    def __init__(self, channels: int, length: int, kernel_size: int, dim: int) -> None:
        super().__init__()
        self.channels = channels
        self.length = length
        self.kernel_size = kernel_size
        num_windows = length // kernel_size
        # Registration order = checkpoint order: pos_embed, cls_token, imu_stem.
        self.pos_embed = nn.Parameter(torch.empty(1, num_windows + 1, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.imu_stem = PatchEmbed(nn.Linear(channels * kernel_size, dim, bias=False), nn.LayerNorm(dim, eps=1e-5))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, imu: Tensor) -> TokenDict:
        _check_shape("imu", imu, (self.channels, self.length))
        k = self.kernel_size
        # (B, C, L) -> (B, C, W, k) -> (B, W, C, k) -> (B, W, C*k): channel-major windows.
        x = imu.unfold(-1, k, k).permute(0, 2, 1, 3)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        # The stem's Linear acts on the window axis directly (no conv flatten).
        tokens = self.imu_stem.norm_layer(self.imu_stem.proj(x))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1) + self.pos_embed
        return {"trunk": {"tokens": tokens}, "head": {}}
