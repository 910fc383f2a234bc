"""PandaGPT's `llama_proj`: Linear(1024 -> LLM hidden) with bias, stored in projector.safetensors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class Projector(nn.Module):
    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.llama_proj = nn.Linear(in_dim, hidden)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.llama_proj(embeddings)


def load_projector(path: Path, dtype: torch.dtype = torch.float32) -> Projector:
    state = load_file(str(path))
    hidden, in_dim = state["llama_proj.weight"].shape
    projector = Projector(in_dim, hidden)
    projector.load_state_dict(state, strict=True)
    return projector.to(dtype).eval().requires_grad_(False)
