"""Stage 1 of the demo recipe: pretrain the tiny LLaMA on the synthetic conversations' text.

The demo LLM starts random, so before the PandaGPT alignment (projector + LoRA, stage 2) it must
learn the language of the task: the questions, the fixed answer phrasings and PandaGPT's turn
structure, including ending every answer with "\\n###" (the `##` stop rule). Sequences are
the PandaGPT template exactly, segment by segment, minus the media slot (there is no image in
stage 1, so which colour/shape is right is unknowable here: stage 2 must get it from the image).

A plain fp32 torch loop on the CPU is enough at this size (2.6M parameters).

Usage: python -m training.lm_pretrain BUNDLE
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import sentencepiece as spm
import torch
from torch import Tensor

from service.bundle import load_bundle
from service.families.pandagpt import prefix_ids
from training import sequences, synthetic
from training.data import Turn
from training.progress import Progress
from training.sequences import IGNORE

# Config (nanoGPT style: edit here). Sized for a few minutes on 2 CPU cores.
TRAIN_CONVERSATIONS = 20_000
HELD_OUT_CONVERSATIONS = 500
TRAIN_SEED, HELD_OUT_SEED = 200, 201  # text-only splits of training/synthetic.py
STEPS = 150
BATCH = 16
LR = 3e-3
WARMUP = 15
WEIGHT_DECAY = 0.01
INIT_STD = 0.02  # LLaMA's init: the bundle's random weights are scaled for inference tests, not training


Conversation = list[dict[str, str]]  # the original JSON's turns: [{"from": "human"|"gpt", "value": ...}]


def encode_conversation(sp: spm.SentencePieceProcessor, conversation: Conversation) -> tuple[list[int], list[int]]:
    """(input ids, answer labels) in PandaGPT's layout (training/sequences.py) minus the media slot.

    Stage 1 trains on every token (the turn structure is the lesson); the labels mark the answers
    so that the held-out loss can be reported on them alone.
    """
    turns = [Turn(t["from"], t["value"]) for t in conversation]
    text = sequences.encode_conversation(sp, turns)
    prefix = prefix_ids(sp)
    return prefix + text.input_ids, [IGNORE] * len(prefix) + text.labels


def batches(sequences: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded (ids, attention mask, answer labels)."""
    width = max(len(ids) for ids, _ in sequences)
    ids = torch.full((len(sequences), width), pad_id)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE)
    for row, (seq, lab) in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        labels[row, : len(seq)] = torch.tensor(lab)
    return ids, mask, labels


def _reinit_(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            p.copy_(
                torch.ones_like(p) if p.ndim == 1 and "norm" in name else torch.randn(p.shape, generator=gen) * INIT_STD
            )


@torch.no_grad()
def answer_loss(model: torch.nn.Module, data: list[tuple[list[int], list[int]]], pad_id: int) -> float:
    """Mean next-token loss over the held-out answers (+ their "\\n###")."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), 64):
        ids, mask, labels = batches(data[i : i + 64], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE, reduction="sum")
        total += float(loss)
        count += int((target != IGNORE).sum())
    model.train()
    return total / count


@torch.no_grad()
def greedy_reply(model: torch.nn.Module, sp: spm.SentencePieceProcessor, question: str, max_new: int = 24) -> str:
    """Greedy reply to a first-turn question (no media), as raw text: a well-formed one ends in "\\n###"."""
    ids = prefix_ids(sp) + sequences.encode_conversation(sp, [Turn("human", question)]).input_ids
    out: list[int] = []
    for _ in range(max_new):
        logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
        out.append(int(logits.argmax()))
        if sp.decode(out).endswith("\n###"):
            break
    return sp.decode(out)


def pretrain(bundle_dir: Path, seed: int = 0) -> dict[str, float]:
    from transformers import LlamaForCausalLM

    bundle = load_bundle(bundle_dir)
    sp = spm.SentencePieceProcessor(model_file=str(bundle.tokenizer_path))
    pad_id = sp.eos_id()  # Vicuna v0: pad = eos
    train = [encode_conversation(sp, c) for c in synthetic.text_conversations(TRAIN_CONVERSATIONS, TRAIN_SEED)]
    held_out = [encode_conversation(sp, c) for c in synthetic.text_conversations(HELD_OUT_CONVERSATIONS, HELD_OUT_SEED)]
    model = LlamaForCausalLM.from_pretrained(str(bundle.llm_dir), dtype=torch.float32)
    _reinit_(model, seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(seed)
    started = time.monotonic()
    progress = Progress("text", STEPS)
    for step in range(STEPS):
        # Linear warm-up, cosine decay to 10%: the usual recipe, short.
        lr = LR * min(1.0, (step + 1) / WARMUP) * (0.55 + 0.45 * math.cos(math.pi * step / STEPS))
        for group in optimizer.param_groups:
            group["lr"] = lr
        picks = torch.randint(len(train), (BATCH,), generator=generator).tolist()
        ids, mask, _ = batches([train[i] for i in picks], pad_id)
        labels = ids.masked_fill(mask == 0, IGNORE)  # every real token: the turn structure is the lesson
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        progress.update(step + 1, loss=loss.item())
    progress.close(loss=loss.item())
    model.eval()
    result = {"held_out_answer_loss": answer_loss(model, held_out, pad_id), "train_s": time.monotonic() - started}
    model.save_pretrained(str(bundle.llm_dir), safe_serialization=True)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    args = parser.parse_args(argv)
    print(pretrain(args.bundle))
    from transformers import LlamaForCausalLM

    bundle = load_bundle(args.bundle)
    sp = spm.SentencePieceProcessor(model_file=str(bundle.tokenizer_path))
    model = LlamaForCausalLM.from_pretrained(str(bundle.llm_dir), dtype=torch.float32)
    for question in ("What is in this image?", "What colour is the shape?", "How many shapes are there?"):
        print(repr(question), "->", repr(greedy_reply(model, sp, question)))


if __name__ == "__main__":
    main()
