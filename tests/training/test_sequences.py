"""Training sequences and label masking against a reference written here from PandaGPT's facts:

- prefix [BOS=1] + tok("### Human: <Img>") + one image vector, all labels -100;
- first (human) turn "</Img> " + v + "\\n### Assistant:", later human turns "Human: " + v + "\\n### Assistant:",
  labels -100; gpt turns v + "\\n###", labels = their ids; each turn tokenized alone, no special tokens;
- text tokens right-padded with EOS (2), labels -100 there, then cut to max_tgt_len;
- loss: shifted cross-entropy over the non -100 labels, i.e. HF LlamaForCausalLM's loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from service.families.pandagpt import LORA, prefix_ids
from training.data import Turn
from training.model import PandaGPTForTraining
from training.sequences import collate, encode_conversation

pytestmark = pytest.mark.unit

EOS = 2
EXCHANGES = [
    ("What is in the picture?", "A red square on a blue sky."),
    ("What colour is the square?", "It is red."),
    ("Where is it? Answer in one word.", "Left."),
    ("Describe it again, please, in more detail than before.", "A small red square near the left edge, with a sky."),
]


def conversation(exchanges: int, trailing_human: bool = False) -> list[tuple[str, str]]:
    turns = []
    for q, a in EXCHANGES[:exchanges]:
        turns += [("human", q), ("gpt", a)]
    return turns + ([("human", "And now?")] if trailing_human else [])


def reference(sp: spm.SentencePieceProcessor, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """The text part's ids and labels, from the facts above (untruncated)."""
    ids: list[int] = []
    labels: list[int] = []
    for i, (role, value) in enumerate(turns):
        if i == 0:
            piece, learn = sp.encode("</Img> " + value + "\n### Assistant:"), False
        elif role == "human":
            piece, learn = sp.encode("Human: " + value + "\n### Assistant:"), False
        else:
            piece, learn = sp.encode(value + "\n###"), True
        ids += piece
        labels += piece if learn else [-100] * len(piece)
    return ids, labels


@pytest.fixture(scope="module")
def sp(demo_bundle: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(demo_bundle / "llm" / "tokenizer.model"))


def encoded(sp: spm.SentencePieceProcessor, turns: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    return encode_conversation(sp, [Turn(role, value) for role, value in turns])


@pytest.mark.parametrize("exchanges", [1, 2, 3, 4])
@pytest.mark.parametrize("trailing_human", [False, True])
def test_one_conversation(sp: spm.SentencePieceProcessor, exchanges: int, trailing_human: bool) -> None:
    turns = conversation(exchanges, trailing_human)
    ids, labels = reference(sp, turns)
    batch = collate([encoded(sp, turns)], max_tgt_len=400, pad_id=EOS)
    assert batch.input_ids.tolist() == [ids]
    assert batch.labels.tolist() == [labels]
    assert batch.attention_mask.tolist() == [[1] * len(ids)]
    # The targets are exactly the answers, each followed by "\n###" (each segment brings its dummy-prefix
    # space, hence the joining spaces); EOS is never one.
    targets = [t for t in labels if t != -100]
    assert sp.decode(targets) == " ".join(a + "\n###" for _, a in EXCHANGES[:exchanges])
    assert EOS not in targets


def test_first_human_turn_is_never_a_target(sp: spm.SentencePieceProcessor) -> None:
    ids, labels = reference(sp, [("human", "Hi"), ("gpt", "Hello")])
    first = sp.encode("</Img> Hi\n### Assistant:")
    assert ids[: len(first)] == first and labels[: len(first)] == [-100] * len(first)


@pytest.mark.parametrize("cut", [0, 1, 5, 12])
def test_a_batch_is_padded_with_eos_then_cut_to_max_tgt_len(sp: spm.SentencePieceProcessor, cut: int) -> None:
    conversations = [conversation(n) for n in (1, 2, 3, 4)]
    refs = [reference(sp, turns) for turns in conversations]
    longest = max(len(ids) for ids, _ in refs)
    max_tgt_len = longest - cut
    batch = collate([encoded(sp, turns) for turns in conversations], max_tgt_len=max_tgt_len, pad_id=EOS)

    width = min(longest, max_tgt_len)
    for row, (ids, labels) in enumerate(refs):
        pad = width - min(len(ids), width)
        assert batch.input_ids[row].tolist() == ids[:width] + [EOS] * pad
        assert batch.labels[row].tolist() == labels[:width] + [-100] * pad
        assert batch.attention_mask[row].tolist() == [1] * (width - pad) + [0] * pad
    if cut >= 5:
        # The original's quirk, reproduced: the longest conversation loses its end mid-answer,
        # and what is left of that answer is still a target (with no "\n###" after it).
        last_labels = batch.labels[3].tolist()
        assert last_labels[-1] != -100
        assert not sp.decode([t for t in last_labels if t != -100]).endswith("\n###")


def test_prefix(sp: spm.SentencePieceProcessor) -> None:
    assert prefix_ids(sp) == [1, *sp.encode("### Human: <Img>")]


def test_loss_is_hf_llama_loss_on_the_reference_sequence(demo_bundle: Path, sp: spm.SentencePieceProcessor) -> None:
    """The model's loss equals HF's own LlamaForCausalLM loss (it shifts the labels itself) on embeddings and
    labels built here: [BOS] + prefix + projected feature + text, -100 on the prefix and the image."""
    torch.manual_seed(0)
    model = PandaGPTForTraining(demo_bundle / "llm", prefix_ids(sp), LORA).eval()  # no dropout
    with torch.no_grad():  # a non-zero LoRA, so the adapter takes part
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    conversations = [conversation(2), conversation(4), conversation(1, trailing_human=True)]
    max_tgt_len = 40  # cuts the 4-exchange one
    features = torch.randn(len(conversations), 1024)
    batch = collate([encoded(sp, turns) for turns in conversations], max_tgt_len=max_tgt_len, pad_id=EOS)
    with torch.no_grad():
        ours = model(features, batch.input_ids, batch.labels, batch.attention_mask)

        table = model.llama_model.get_input_embeddings().weight
        proj = model.llama_proj
        before = [1, *sp.encode("### Human: <Img>")]
        refs = [reference(sp, turns) for turns in conversations]
        width = min(max(len(ids) for ids, _ in refs), max_tgt_len)
        rows, labels, masks = [], [], []
        for i, (ids, text_labels) in enumerate(refs):
            n = min(len(ids), width)
            text_ids = ids[:n] + [EOS] * (width - n)
            image = features[i] @ proj.weight.T + proj.bias
            rows.append(torch.cat([table[before], image[None], table[text_ids]]))
            labels.append([-100] * (len(before) + 1) + text_labels[:n] + [-100] * (width - n))
            masks.append([1] * (len(before) + 1 + n) + [0] * (width - n))
        hf = model.llama_model(
            inputs_embeds=torch.stack(rows), attention_mask=torch.tensor(masks), labels=torch.tensor(labels)
        ).loss
    assert torch.allclose(ours, hf, rtol=1e-5, atol=1e-6), (ours.item(), hf.item())
