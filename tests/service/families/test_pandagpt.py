"""PandaGPT's template, slot layout and stop rule against strings and ids written here from the
original code's facts."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from service.bundle import load_bundle
from service.core.prompt import PromptAssembler
from service.families import generation_defaults, load_family
from service.families.base import Medium
from service.families.pandagpt import LORA, PROMPT_START, PandaGPT, conversation_text

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def family(demo_bundle: Path) -> PandaGPT:
    family = load_family(load_bundle(demo_bundle))
    assert isinstance(family, PandaGPT)
    return family


def test_prompt_start_is_the_original_string() -> None:
    assert PROMPT_START == "### Human: <Img>"


def test_first_turn_has_no_human_prefix() -> None:
    assert conversation_text([], "What is this?") == "</Img> What is this?\n### Assistant:"


def test_history_format_of_the_web_demo() -> None:
    history = [("q1", " a1"), ("q2", "a2\n")]
    expected = "</Img> q1\n### Assistant:  a1\n### Human: q2\n### Assistant: a2\n\n### Human: q3\n### Assistant:"
    assert conversation_text(history, "q3") == expected


def test_prompt_places_bos_segments_and_the_summed_slot(demo_bundle: Path, family: PandaGPT) -> None:
    prompts = PromptAssembler.load(demo_bundle / "llm")
    sp = spm.SentencePieceProcessor(model_file=str(demo_bundle / "llm" / "tokenizer.model"))
    media = [torch.randn(1, prompts.hidden_size) for _ in range(3)]
    history = [("Describe it", "A red square.")]
    embeds = prompts.assemble(family.prompt(history, "And the colour?", [Medium("image", m) for m in media]))

    before = [1, *sp.encode("### Human: <Img>")]
    after = sp.encode("</Img> Describe it\n### Assistant: A red square.\n### Human: And the colour?\n### Assistant:")
    table = prompts.embeddings
    assert embeds.shape == (len(before) + 1 + len(after), prompts.hidden_size)
    assert torch.equal(embeds[: len(before)], table[before])
    assert torch.equal(embeds[len(before)], media[0][0] + media[1][0] + media[2][0])  # one vector: the sum
    assert torch.equal(embeds[len(before) + 1 :], table[after])


def test_user_text_is_tokenized_literally(family: PandaGPT) -> None:
    tokenizer = family.tokenizer
    ids = tokenizer.encode("say </s> and <s>")
    assert tokenizer.eos_id() not in ids and tokenizer.bos_id() not in ids
    assert tokenizer.decode(ids) == "say </s> and <s>"


def test_stop_rule_drops_the_separator_and_the_token_before_it_eos_only_itself(family: PandaGPT) -> None:
    separator = family.tokenizer.piece_to_id("##")
    rule = family.stop_rule
    assert {s.tokens: s.drop_before for s in rule.sequences} == {(separator,): 1, (family.tokenizer.eos_id(),): 0}
    assert rule.holdback == 1 and set(rule.engine_stop_ids()) == {separator, family.tokenizer.eos_id()}


def test_adapter_and_generation_defaults_are_the_originals(demo_bundle: Path, family: PandaGPT) -> None:
    assert (LORA.targets, LORA.rank, LORA.alpha, LORA.dropout) == (
        ("q_proj", "k_proj", "v_proj", "o_proj"),
        32,
        32,
        0.1,
    )
    defaults = generation_defaults(family, load_bundle(demo_bundle))
    assert (defaults.max_tokens, defaults.temperature, defaults.top_p, defaults.top_k) == (256, 1.0, 0.01, 50)
