"""PandaGPT's rules, exact to its released code (the facts: README, "Fidelity to PandaGPT").

Serving:  [BOS] + tok("### Human: <Img>") + [media slot] + tok("</Img> " + history + input + "\\n### Assistant:")
Each text segment is tokenized on its own with SentencePiece and no special tokens (so each segment
gets the dummy-prefix space); BOS is added by hand. User text is tokenized literally: "</s>" typed
by a user is text, not EOS (the original's slow HF tokenizer made it a special id). The slot is one
vector: each medium projected on its own (bias included each time), then summed.

Stop: generating `##` (the middle piece of "\\n###") ends the reply; it and the token before it
(the "\\n") are dropped. EOS drops only itself (the original dropped one more: a bug, not kept).

Training (PandaGPT's `build_one_instance`) tokenizes each turn alone, see `training_turn_text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm
import torch

from service.families.base import Exchange, GenerationDefaults, LoraSpec, Medium, Segment, StopRule, StopSequence

NAME = "pandagpt"
PROMPT_START = "### Human: <Img>"
# The order of the slot's sum: the original's four, then depth and IMU, which it had no loaders for.
MODALITY_ORDER = ("image", "audio", "video", "thermal", "depth", "imu")
LORA = LoraSpec(targets=("q_proj", "k_proj", "v_proj", "o_proj"), rank=32, alpha=32, dropout=0.1)
# The demo's: sampling on with top_p 0.01 (effectively greedy), HF's hidden top_k 50.
GENERATION = GenerationDefaults(max_tokens=256, temperature=1.0, top_p=0.01, top_k=50)


def conversation_text(history: Sequence[Exchange], message: str) -> str:
    """The text after the media slot: the web demo's history format, wrapped by the model."""
    text = ""
    for i, (question, answer) in enumerate(history):
        lead = "" if i == 0 else " Human: "
        text += f"{lead}{question}\n### Assistant: {answer}\n###"
    text += message if not history else f" Human: {message}"
    return "</Img> " + text + "\n### Assistant:"


def training_turn_text(index: int, role: str, value: str) -> str:
    """One turn of a training conversation (`role` "human" or "gpt"; the first is the human's)."""
    if index == 0:
        return "</Img> " + value + "\n### Assistant:"
    if role == "human":
        return "Human: " + value + "\n### Assistant:"
    return value + "\n###"


def prefix_ids(tokenizer: spm.SentencePieceProcessor) -> list[int]:
    """[BOS] + tok("### Human: <Img>"): what precedes the media slot."""
    return [tokenizer.bos_id(), *tokenizer.encode(PROMPT_START)]


class PandaGPT:
    name = NAME
    lora = LORA
    generation = GENERATION
    modality_order: tuple[str, ...] = MODALITY_ORDER

    def __init__(self, tokenizer: spm.SentencePieceProcessor, separator_ids: Sequence[int]) -> None:
        """`separator_ids`: the bundle's stop ids, the piece `##` inside "\\n###" (2277 for LLaMA)."""
        self.tokenizer = tokenizer
        separators = tuple(StopSequence((i,), drop_before=1) for i in separator_ids)
        self.stop_rule = StopRule((*separators, StopSequence((tokenizer.eos_id(),))))
        self._prefix = prefix_ids(tokenizer)

    @classmethod
    def load(cls, tokenizer_path: Path, separator_ids: Sequence[int]) -> PandaGPT:
        return cls(spm.SentencePieceProcessor(model_file=str(tokenizer_path)), separator_ids)

    def prompt(
        self, history: Sequence[Exchange], message: str, media: Sequence[Medium], budget: int | None = None
    ) -> list[Segment]:
        """The whole conversation, whatever `budget`: the original neither truncated nor trimmed."""
        slot = torch.cat([m.soft_prompt for m in media]).sum(dim=0, keepdim=True)
        return [self._prefix, slot, self.tokenizer.encode(conversation_text(history, message))]

    def clean_reply(self, text: str) -> str:
        """As decoded: the original kept its replies unstripped."""
        return text
