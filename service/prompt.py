"""PandaGPT's conversation template, tokenization and stop rule, exact to its released code.

Sequence:  [BOS] + tok("### Human: <Img>") + [media slot] + tok("</Img> " + history + input + "\n### Assistant:")
Each text segment is tokenized on its own with the SentencePiece model and no special tokens
(so each segment gets SentencePiece's dummy-prefix space); BOS is embedded by hand.
User text is tokenized literally: "</s>" typed by a user is text, not EOS (the original's slow
HF tokenizer made it a special id; see the README's fidelity section).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors import safe_open

PROMPT_START = "### Human: <Img>"
EMBED_KEY = "model.embed_tokens.weight"


def conversation_text(history: Sequence[tuple[str, str]], message: str) -> str:
    """The text after the media slot: PandaGPT web demo's history format, wrapped by the model."""
    text = ""
    for i, (question, answer) in enumerate(history):
        lead = "" if i == 0 else " Human: "
        text += f"{lead}{question}\n### Assistant: {answer}\n###"
    text += message if not history else f" Human: {message}"
    return "</Img> " + text + "\n### Assistant:"


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


class PromptBuilder:
    """Turns (history, message, media slot) into the prompt embeddings the engine consumes."""

    def __init__(self, tokenizer: spm.SentencePieceProcessor, embeddings: torch.Tensor) -> None:
        self.tokenizer = tokenizer
        self.embeddings = embeddings
        self.bos_id = tokenizer.bos_id()
        self.eos_id = tokenizer.eos_id()
        self.start_ids = self.encode(PROMPT_START)

    @classmethod
    def load(cls, tokenizer_path: Path, llm_dir: Path) -> PromptBuilder:
        tokenizer = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
        return cls(tokenizer, load_token_embeddings(llm_dir))

    @property
    def hidden_size(self) -> int:
        return self.embeddings.shape[1]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids))

    def build(self, history: Sequence[tuple[str, str]], message: str, slot: torch.Tensor) -> torch.Tensor:
        """[L, hidden] prompt embeddings; `slot` is the summed projected media vector [hidden]."""
        after_ids = self.encode(conversation_text(history, message))
        table = self.embeddings
        return torch.cat(
            [
                table[[self.bos_id, *self.start_ids]],
                slot.to(table.dtype).reshape(1, -1),
                table[after_ids],
            ]
        )
