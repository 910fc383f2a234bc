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
class Medium:
    """One upload, as a family places it in the prompt.

    `modality` and `soft_prompt` are all PandaGPT needs. Video-LLaMA writes each medium's own
    placeholder text into the turn that sent it, and a video's text depends on what its decoding
    found, so a medium also says which turn it came with, its audio track's vectors (a second slot)
    and its timestamp sentence.
    """

    modality: str  # one of the six upload kinds (encoders.modalities)
    soft_prompt: torch.Tensor  # [n, hidden]: the vectors of its slot
    turn: int = 0  # the index of the exchange it was sent with (len(history): the turn being asked)
    # Video-LLaMA, a video only: its own audio track through the audio branch [8, hidden]; None
    # when the video has no audio track (or the bundle no audio branch).
    audio_track: torch.Tensor | None = None
    # Video-LLaMA, a video only: what its preprocessing wrote of when each sampled frame was taken
    # (encoders/videollama/preprocess.py), the sentence after its placeholder.
    timestamps: str = ""


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
    generation: GenerationDefaults
    stop_rule: StopRule

    @property
    def lora(self) -> LoraSpec | None:
        """The adapter's settings; None: the LLM is served without one."""
        ...

    def prompt(
        self, history: Sequence[Exchange], message: str, media: Sequence[Medium], budget: int | None = None
    ) -> list[Segment]:
        """The prompt of a turn. `media`: every turn's media, in the order they were sent (oldest
        first). `budget`: the most positions the prompt may take; a family that trims history drops
        what it may to fit (one that does not returns it whole: the chat core refuses what is over)."""
        ...

    def clean_reply(self, text: str) -> str:
        """The reply as returned and kept in the history, from the decoded text of its final tokens."""
        ...
