"""Prompt assembly: a family's segments (token ids and soft-prompt rows) -> the prompt embeddings
the engine consumes. The token rows are looked up in the LLM's own input embedding table, read
alone from the bundle's checkpoint; the media rows are spliced in between."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from service.families.base import Segment

EMBED_KEY = "model.embed_tokens.weight"


def weights_file(llm_dir: Path, key: str) -> Path:
    """The file of an HF checkpoint holding `key`: safetensors or PyTorch .bin, single or sharded."""
    for index, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        if (llm_dir / index).exists():
            return llm_dir / json.loads((llm_dir / index).read_text())["weight_map"][key]
        if (llm_dir / single).exists():
            return llm_dir / single
    raise FileNotFoundError(f"no safetensors or pytorch_model.bin weights in {llm_dir}")


def load_token_embeddings(llm_dir: Path) -> torch.Tensor:
    """The LLM's input embedding table, read alone (mmap) from its checkpoint."""
    path = weights_file(llm_dir, EMBED_KEY)
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(EMBED_KEY)
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)[EMBED_KEY].clone()


class PromptAssembler:
    def __init__(self, embeddings: torch.Tensor) -> None:
        self.embeddings = embeddings

    @classmethod
    def load(cls, llm_dir: Path) -> PromptAssembler:
        return cls(load_token_embeddings(llm_dir))

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]

    @property
    def vocab_size(self) -> int:
        return self.embeddings.shape[0]

    def assemble(self, segments: Sequence[Segment]) -> torch.Tensor:
        """[L, hidden]: each segment's rows in order."""
        table = self.embeddings
        return torch.cat([table[s] if isinstance(s, list) else s.to(table.dtype) for s in segments])
