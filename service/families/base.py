"""The model-family seam: what differs between PandaGPT-style systems, behind one small protocol.

A family owns its rules: the conversation template and how its text is tokenized, where the media
go in the prompt (how many slots, how many vectors each), when a reply stops and what of its end is
dropped, its generation defaults and its adapter's settings. The chat core, the benchmarks and
training use a family only through this protocol; the bundle manifest's `family` selects it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import sentencepiece as spm
import torch

# A prompt, in order: token ids (a text segment, tokenized as the family does) or rows of
# soft-prompt vectors [n, hidden] (a media slot) spliced between them.
Segment = list[int] | torch.Tensor
Exchange = tuple[str, str]  # (the user's message, the reply as it was returned)


@dataclass(frozen=True)
class LoraSpec:
    """The adapter's hyper-parameters, with its targets named as in the HF LLaMA model."""

    targets: tuple[str, ...]
    rank: int
    alpha: int
    dropout: float  # in training


@dataclass(frozen=True)
class GenerationDefaults:
    """What a request that names no sampling parameter gets."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int


@dataclass(frozen=True)
class StopSequence:
    """Generating `tokens` ends the reply; they and the `drop_before` tokens before them are dropped."""

    tokens: tuple[int, ...]
    drop_before: int = 0


@dataclass(frozen=True)
class StopRule:
    sequences: tuple[StopSequence, ...]

    @property
    def holdback(self) -> int:
        """How many of the newest tokens may still be dropped by a stop that has not happened yet."""
        return max((len(s.tokens) - 1 + s.drop_before for s in self.sequences), default=0)

    def engine_stop_ids(self) -> tuple[int, ...]:
        """Single-token stops the engine can end the request at by itself."""
        return tuple(s.tokens[0] for s in self.sequences if len(s.tokens) == 1)


class Family(Protocol):
    name: str
    tokenizer: spm.SentencePieceProcessor
    modality_order: tuple[str, ...]  # the order a turn's uploads take in the prompt
    lora: LoraSpec
    generation: GenerationDefaults
    stop_rule: StopRule

    def prompt(self, history: Sequence[Exchange], message: str, media: Sequence[torch.Tensor]) -> list[Segment]:
        """The prompt of a turn. `media`: each medium's soft-prompt vectors [n, hidden], in the order
        the media were sent (every turn's, oldest first)."""
        ...
