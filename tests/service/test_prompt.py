"""PandaGPT's template and stop rule against strings written here from the original code's facts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import save_file

from service.prompt import (
    EMBED_KEY,
    PROMPT_START,
    PromptBuilder,
    conversation_text,
    load_token_embeddings,
)


def test_prompt_start_is_the_original_string() -> None:
    assert PROMPT_START == "### Human: <Img>"


def test_first_turn_has_no_human_prefix() -> None:
    assert conversation_text([], "What is this?") == "</Img> What is this?\n### Assistant:"


def test_history_format_of_the_web_demo() -> None:
    history = [("q1", " a1"), ("q2", "a2\n")]
    expected = "</Img> q1\n### Assistant:  a1\n### Human: q2\n### Assistant: a2\n\n### Human: q3\n### Assistant:"
    assert conversation_text(history, "q3") == expected


def test_build_places_bos_segments_and_slot(demo_bundle: Path) -> None:
    builder = PromptBuilder.load(demo_bundle / "llm" / "tokenizer.model", demo_bundle / "llm")
    sp = spm.SentencePieceProcessor(model_file=str(demo_bundle / "llm" / "tokenizer.model"))
    slot = torch.randn(builder.hidden_size)
    history = [("Describe it", "A red square.")]
    embeds = builder.build(history, "And the colour?", slot)

    before = [1, *sp.encode("### Human: <Img>")]
    after = sp.encode("</Img> Describe it\n### Assistant: A red square.\n### Human: And the colour?\n### Assistant:")
    table = builder.embeddings
    assert embeds.shape == (len(before) + 1 + len(after), builder.hidden_size)
    assert torch.equal(embeds[: len(before)], table[before])
    assert torch.equal(embeds[len(before)], slot)
    assert torch.equal(embeds[len(before) + 1 :], table[after])


def test_user_text_is_tokenized_literally(demo_bundle: Path) -> None:
    builder = PromptBuilder.load(demo_bundle / "llm" / "tokenizer.model", demo_bundle / "llm")
    ids = builder.encode("say </s> and <s>")
    assert builder.eos_id not in ids and builder.bos_id not in ids
    assert builder.decode(ids) == "say </s> and <s>"


@pytest.mark.parametrize("layout", ["safetensors-sharded", "bin", "bin-sharded"])
def test_token_embeddings_load_from_every_hf_layout(demo_bundle: Path, tmp_path: Path, layout: str) -> None:
    expected = load_token_embeddings(demo_bundle / "llm")
    other = {"lm_head.weight": torch.zeros(3, 2)}
    if layout == "bin":
        torch.save({EMBED_KEY: expected, **other}, tmp_path / "pytorch_model.bin")
    else:
        suffix = "safetensors" if layout.startswith("safetensors") else "bin"
        shards = {EMBED_KEY: f"model-00002-of-00002.{suffix}", "lm_head.weight": f"model-00001-of-00002.{suffix}"}
        for key, name in shards.items():
            tensors = {key: expected if key == EMBED_KEY else other[key]}
            save_file(tensors, str(tmp_path / name)) if suffix == "safetensors" else torch.save(
                tensors, tmp_path / name
            )
        index = "model.safetensors.index.json" if suffix == "safetensors" else "pytorch_model.bin.index.json"
        (tmp_path / index).write_text(json.dumps({"weight_map": shards}))
    assert torch.equal(load_token_embeddings(tmp_path), expected)


def test_missing_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no safetensors or pytorch_model.bin"):
        load_token_embeddings(tmp_path)
