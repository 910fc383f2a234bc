"""Training sequences and labels, exact to PandaGPT's `build_one_instance` / `process_batch_instance`
(the template's strings are the family's: service/families/pandagpt.py).

One example becomes

    [BOS] + tok("### Human: <Img>") + [image vector] + text tokens
    labels: -100 ...................................   -100 on human turns, the ids on gpt turns

where the text tokens are, turn by turn, each turn tokenized on its own (SentencePiece, no special
tokens, so each segment gets the dummy-prefix space):

    first turn (human)   "</Img> " + value + "\\n### Assistant:"   labels -100
    later human turns    "Human: " + value + "\\n### Assistant:"    labels -100
    gpt turns            value + "\\n###"                           labels = the ids (the targets)

The text tokens of a batch are right-padded with the pad id (= EOS, 2: Vicuna v0) and labels -100,
then cut to `max_tgt_len` (the prefix is not counted). So a long conversation loses its end, and
its last target may stop mid-answer; EOS (`</s>`) is never a target: the model learns to stop
with "\\n###". The loss is the shifted cross-entropy (position t predicts t+1) averaged over the
micro-batch's target tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sentencepiece as spm
import torch

from service.families.pandagpt import training_turn_text
from training.data import Turn

IGNORE = -100  # PyTorch's cross-entropy ignore_index, as HF and the original use


@dataclass(frozen=True)
class Encoded:
    """The text part of one example, untruncated."""

    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class TextBatch:
    input_ids: torch.Tensor  # [B, T] long, right-padded with the pad id, T <= max_tgt_len
    labels: torch.Tensor  # [B, T] long, -100 on human turns and padding
    attention_mask: torch.Tensor  # [B, T] long, 0 on padding


def encode_conversation(sp: spm.SentencePieceProcessor, conversation: Sequence[Turn]) -> Encoded:
    input_ids: list[int] = []
    labels: list[int] = []
    for i, turn in enumerate(conversation):
        ids = sp.encode(training_turn_text(i, turn.role, turn.value))  # data.py: the first turn is the human's
        input_ids += ids
        labels += ids if i > 0 and turn.role == "gpt" else [IGNORE] * len(ids)
    return Encoded(input_ids, labels)


def collate(examples: Sequence[Encoded], max_tgt_len: int, pad_id: int) -> TextBatch:
    """Right-pad to the longest, then keep the first `max_tgt_len` tokens, as the original did
    (the same as cutting each example first: the batch is as long as its longest cut example)."""
    length = min(max(len(e.input_ids) for e in examples), max_tgt_len)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, e in enumerate(examples):
        n = min(len(e.input_ids), length)
        input_ids[row, :n] = torch.tensor(e.input_ids[:n])
        labels[row, :n] = torch.tensor(e.labels[:n])
        # The original used input_ids != pad_id; text tokenized literally never yields the pad id
        # (EOS), so that is exactly "not padding".
        attention_mask[row, :n] = 1
    return TextBatch(input_ids, labels, attention_mask)
