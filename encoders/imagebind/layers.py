"""Transformer trunk, heads and postprocessors of ImageBind.

Module and attribute names mirror the original code because they *are* the
checkpoint's state-dict keys (``blocks.<i>.attn``, ``norm_1``, ``mlp.fc1`` ...).
Inside the state dict a module's own parameters come first, then its buffers,
then its children in registration order, so the order in which attributes are
assigned below is load-bearing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Upstream uses eps=1e-6 for every LayerNorm in trunks and heads (the stems use
# the torch default 1e-5); a mismatch would silently shift every activation.
TRUNK_LN_EPS = 1e-6


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample (training only)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        # Same as upstream (timm's drop_path): the mask runs over dim 0. Upstream
        # calls it on sequence-first (L, B, D) tokens, so it effectively drops per
        # token position rather than per sample; we keep that for training parity.
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as upstream
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block on sequence-first tokens (L, B, D); no LayerScale."""

    def __init__(self, dim: int, num_heads: int, drop_path: float, add_bias_kv: bool) -> None:
        super().__init__()
        # torch's MultiheadAttention holds the weights: its packed in_proj_weight,
        # bias_k/bias_v and out_proj are exactly the checkpoint's tensors. Its forward
        # is not used (see _attention).
        self.attn = nn.MultiheadAttention(dim, num_heads, bias=True, add_bias_kv=add_bias_kv)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm_1 = nn.LayerNorm(dim, eps=TRUNK_LN_EPS)
        self.mlp = Mlp(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=TRUNK_LN_EPS)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop_path(self._attention(self.norm_1(x), attn_mask))
        return x + self.drop_path(self.mlp(self.norm_2(x)))

    def _attention(self, h: Tensor, attn_mask: Tensor | None) -> Tensor:
        """``self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]``, computed directly.

        Same math as torch's sequence-first MultiheadAttention (which also ends in
        scaled_dot_product_attention), without its copies: its packed path makes the
        (L, B, 3D) projection contiguous per q/k/v before splitting heads, while here q, k
        and v are strided (B, H, L, hd) views of the projection, which the fused attention
        kernels read as they are. On the CPU the results are bit-for-bit the module's.
        """
        attn = self.attn
        seq, bsz, dim = h.shape
        heads = attn.num_heads
        head_dim = dim // heads
        qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
        # (L, B, 3D) -> (3, B, H, L, hd): in_proj_weight stacks the q, k and v rows.
        q, k, v = qkv.view(seq, bsz, 3, heads, head_dim).permute(2, 1, 3, 0, 4).unbind(0)
        if attn.bias_k is not None and attn.bias_v is not None:
            # add_bias_kv: one learned key/value position appended after the sequence.
            k = torch.cat([k, attn.bias_k.view(1, heads, 1, head_dim).expand(bsz, -1, -1, -1)], dim=2)
            v = torch.cat([v, attn.bias_v.view(1, heads, 1, head_dim).expand(bsz, -1, -1, -1)], dim=2)
            if attn_mask is not None:
                attn_mask = F.pad(attn_mask, (0, 1))  # the extra position is always visible
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        # (B, H, L, hd) -> (L, B, D), then the output projection.
        return attn.out_proj(out.permute(2, 0, 1, 3).reshape(seq, bsz, dim))


class SeqFirst(nn.Module):
    """(B, L, D) -> (L, B, D): upstream's trunks run attention sequence-first."""

    def forward(self, x: Tensor) -> Tensor:
        # Contiguous, not a transposed view: elementwise results take the layout of their
        # first input, so a view would keep the whole residual stream batch-major, and
        # every LayerNorm would then copy its input and every residual add run strided
        # (~11% of the huge vision forward's GPU time). One copy here avoids all of that.
        return x.transpose(0, 1).contiguous()


class Trunk(nn.Module):
    """Upstream ``SimpleTransformer``: optional LayerNorm, blocks, back to (B, L, D)."""

    def __init__(
        self,
        dim: int,
        num_blocks: int,
        num_heads: int,
        drop_path: float,
        pre_transformer_ln: bool,
        add_bias_kv: bool,
    ) -> None:
        super().__init__()
        # Only vision has a LayerNorm here; keeping the Sequential (with Identity
        # otherwise) reproduces the key `pre_transformer_layer.0.*`.
        first = nn.LayerNorm(dim, eps=TRUNK_LN_EPS) if pre_transformer_ln else nn.Identity()
        self.pre_transformer_layer = nn.Sequential(first, SeqFirst())
        # Linearly spaced stochastic-depth rates 0..drop_path (torch.linspace
        # semantics); computed in Python so building on the meta device works.
        rates = [drop_path * i / (num_blocks - 1) if num_blocks > 1 else 0.0 for i in range(num_blocks)]
        self.blocks = nn.ModuleList(Block(dim, num_heads, r, add_bias_kv) for r in rates)
        self.apply(init_trunk_weights)

    def forward(self, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self.pre_transformer_layer(tokens)
        for blk in self.blocks:
            x = blk(x, attn_mask=attn_mask)
        return x.transpose(0, 1)


def init_trunk_weights(m: nn.Module) -> None:
    # Upstream's SimpleTransformer init (EVA's ViT uses the same); only matters for randomly
    # initialised (tiny) models, real checkpoints overwrite everything.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class SelectElement(nn.Module):
    """Pick one token (the CLS token at index 0) from (B, L, D)."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.index, ...]


class SelectEOSAndProject(nn.Module):
    """Text head: the causal text trunk has no CLS; the EOT position summarises the text."""

    def __init__(self, proj: nn.Module) -> None:
        super().__init__()
        self.proj = proj

    def forward(self, x: Tensor, seq_len: Tensor) -> Tensor:
        x = x[torch.arange(x.shape[0], device=x.device), seq_len]
        return self.proj(x)


class Normalize(nn.Module):
    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=self.dim, p=2)


class LogitScale(nn.Module):
    """Multiply by exp(log_logit_scale), clamped at ``max_logit_scale``.

    Learnable scales are parameters, fixed ones are buffers: both are in the
    checkpoint, and the split must match for strict loading. ``enabled=False``
    keeps the tensor (for loading) but skips the multiplication.
    """

    def __init__(
        self,
        logit_scale_init: float = 1 / 0.07,
        learnable: bool = True,
        max_logit_scale: float = 100.0,
        enabled: bool = True,
    ) -> None:
        super().__init__()
        self.max_logit_scale = max_logit_scale
        self.learnable = learnable
        self.enabled = enabled
        value = torch.full((), math.log(logit_scale_init))
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        return torch.clamp(self.log_logit_scale.exp(), max=self.max_logit_scale) * x

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}, max_logit_scale={self.max_logit_scale}, enabled={self.enabled}"
