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
        # torch's MultiheadAttention is used as is: its packed in_proj_weight,
        # bias_k/bias_v and out_proj are exactly the checkpoint's tensors.
        self.attn = nn.MultiheadAttention(dim, num_heads, bias=True, add_bias_kv=add_bias_kv)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm_1 = nn.LayerNorm(dim, eps=TRUNK_LN_EPS)
        self.mlp = Mlp(dim, 4 * dim)
        self.norm_2 = nn.LayerNorm(dim, eps=TRUNK_LN_EPS)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        h = self.norm_1(x)
        x = x + self.drop_path(self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.drop_path(self.mlp(self.norm_2(x)))


class SeqFirst(nn.Module):
    """(B, L, D) -> (L, B, D): upstream's trunks run attention sequence-first."""

    def forward(self, x: Tensor) -> Tensor:
        return x.transpose(0, 1)


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
        self.apply(_init_trunk_weights)

    def forward(self, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self.pre_transformer_layer(tokens)
        for blk in self.blocks:
            x = blk(x, attn_mask=attn_mask)
        return x.transpose(0, 1)


def _init_trunk_weights(m: nn.Module) -> None:
    # Upstream's SimpleTransformer init; only matters for randomly initialised
    # (tiny) models, real checkpoints overwrite everything.
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
