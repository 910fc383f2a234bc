"""PandaGPT's `llama_proj`: Linear(1024 -> LLM hidden) with bias, stored in projector.safetensors;
and the encoder the chat core sees: the pool's embeddings projected into soft prompts."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from encoders.media import Embedder, MediaInput, SoftPrompt


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


class ProjectedEncoder:
    """An `Encoder`: the embedder's answers, and each projected as one soft-prompt vector [1, hidden]."""

    def __init__(self, embedder: Embedder, projector: Projector) -> None:
        self.embedder = embedder
        self.projector = projector

    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        return await self.embedder.encode(items)

    async def soft_prompts(self, items: list[MediaInput]) -> list[SoftPrompt]:
        embeddings = await self.embedder.encode(items)
        # One file at a time, as the original projected each modality's embedding on its own: a
        # batched matmul may round differently in the last bit.
        with torch.inference_mode():
            return [SoftPrompt(self.projector(embedding[None])) for embedding in embeddings]

    async def check_health(self) -> None:
        await self.embedder.check_health()

    async def close(self) -> None:
        await self.embedder.close()
