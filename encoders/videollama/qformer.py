"""The Q-Former as Video-LLaMA runs it: BLIP-2's BERT with the text parts removed.

Learned queries attend to themselves and, in every ``cross_attention_freq``-th layer, to encoder
states (image patches, frame queries or audio clips), then pass a query-only feed-forward. With
queries alone on the input, upstream's text path (word and position embeddings, ``intermediate``,
``output``, the ``cls`` head) never runs and was set to None; it is not built here. Every attention
mask on the inference path is all ones, so there is none.

Attribute names are the checkpoint's keys: ``bert.embeddings.{position_ids, LayerNorm}``,
``bert.encoder.layer.N.{attention, crossattention}.{self.{query,key,value}, output.{dense,LayerNorm}}``,
``bert.encoder.layer.N.{intermediate_query.dense, output_query.{dense,LayerNorm}}``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import VideoLlamaConfig

# bert-base-uncased's layer_norm_eps, which upstream loads with the BERT config.
BERT_LN_EPS = 1e-12


class SelfAttentionProjections(nn.Module):
    """``attention.self``: query from the hidden states; key and value from them or from the encoder."""

    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def forward(self, hidden_states: Tensor, kv_states: Tensor) -> Tensor:
        def heads(t: Tensor) -> Tensor:  # (B, L, D) -> (B, H, L, hd)
            return t.view(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)

        q, k, v = heads(self.query(hidden_states)), heads(self.key(kv_states)), heads(self.value(kv_states))
        out = F.scaled_dot_product_attention(q, k, v)  # scores / sqrt(head_dim), as BERT
        return out.transpose(1, 2).flatten(2)


class AddNorm(nn.Module):
    """BERT's ``*Output``: dense, then LayerNorm of the residual sum (post-norm)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=BERT_LN_EPS)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int) -> None:
        super().__init__()
        self.self = SelfAttentionProjections(hidden, heads, kv_width)
        self.output = AddNorm(hidden, hidden)

    def forward(self, x: Tensor, kv_states: Tensor) -> Tensor:
        return self.output(self.self(x, kv_states), x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # bert-base's hidden_act "gelu": the exact (erf) one


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, encoder_width: int, cross_attention: bool) -> None:
        super().__init__()
        self.attention = Attention(hidden, heads, hidden)
        # Only layers with cross-attention have the module (and its keys).
        self.crossattention = Attention(hidden, heads, encoder_width) if cross_attention else None
        self.intermediate_query = Intermediate(hidden, intermediate)
        self.output_query = AddNorm(intermediate, hidden)

    def forward(self, x: Tensor, encoder_states: Tensor) -> Tensor:
        x = self.attention(x, x)
        if self.crossattention is not None:
            x = self.crossattention(x, encoder_states)
        return self.output_query(self.intermediate_query(x), x)


class Embeddings(nn.Module):
    def __init__(self, hidden: int, max_positions: int) -> None:
        super().__init__()
        # Unused with queries alone, but persistent upstream: every released checkpoint holds it, so
        # it is kept for the original state dicts to load strictly.
        self.register_buffer("position_ids", torch.arange(max_positions).expand((1, -1)))
        self.LayerNorm = nn.LayerNorm(hidden, eps=BERT_LN_EPS)


class Encoder(nn.Module):
    def __init__(self, layers: list[Layer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class Bert(nn.Module):
    def __init__(self, embeddings: Embeddings, encoder: Encoder) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder


class QFormer(nn.Module):
    """(B, Q, hidden) query tokens, (B, L, encoder_width) states -> (B, Q, hidden). The three Q-Formers
    share the config's widths (bert-base's); they differ in depth, what they attend to and how often."""

    def __init__(
        self, config: VideoLlamaConfig, *, num_layers: int, encoder_width: int, cross_attention_freq: int = 1
    ) -> None:
        super().__init__()
        c = config
        layers = [
            Layer(
                c.qformer_hidden,
                c.qformer_heads,
                c.qformer_intermediate,
                encoder_width,
                cross_attention=i % cross_attention_freq == 0,
            )
            for i in range(num_layers)
        ]
        self.bert = Bert(Embeddings(c.qformer_hidden, c.qformer_max_positions), Encoder(layers))
        self.apply(_init_weights)

    def forward(self, query_tokens: Tensor, encoder_states: Tensor) -> Tensor:
        x = self.bert.embeddings.LayerNorm(query_tokens)  # the queries are normalised before layer 0
        for layer in self.bert.encoder.layer:
            x = layer(x, encoder_states)
        return x


def _init_weights(m: nn.Module) -> None:
    # BERT's init (std = initializer_range 0.02); only random (tiny) models see it.
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
