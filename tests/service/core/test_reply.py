"""The reply's pure pieces: the stop rule's scanner, the incremental decoder, stop strings."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import sentencepiece as spm

from service.core.reply import ReplyDecoder, StopScanner, StopStrings
from service.families.base import StopRule, StopSequence

pytestmark = pytest.mark.unit

SEP, EOS = 7, 2
PANDAGPT_LIKE = StopRule((StopSequence((SEP,), drop_before=1), StopSequence((EOS,))))


def scan(rule: StopRule, tokens: list[int]) -> tuple[list[list[int]], bool]:
    """What each push released, then what finish released; and whether the rule stopped the reply."""
    scanner: StopScanner[None] = StopScanner(rule)
    out = []
    stopped = False
    for t in tokens:
        stopped = scanner.push(t, None)
        out.append([x for x, _ in scanner.release()])
        if stopped:
            break
    out.append([x for x, _ in scanner.finish()])
    return out, stopped


def test_separator_drops_itself_and_the_held_token() -> None:
    out, stopped = scan(PANDAGPT_LIKE, [10, 11, 13, SEP, 99])
    assert stopped and sum(out, []) == [10, 11]
    assert out[:2] == [[], [10]]  # the newest token is always held back until the next


def test_eos_drops_only_itself_and_length_keeps_all() -> None:
    assert sum(scan(PANDAGPT_LIKE, [10, 11, EOS])[0], []) == [10, 11]
    out, stopped = scan(PANDAGPT_LIKE, [10, 11, 12])
    assert not stopped and sum(out, []) == [10, 11, 12]


def test_separator_first_and_a_multi_token_stop() -> None:
    assert sum(scan(PANDAGPT_LIKE, [SEP])[0], []) == []
    rule = StopRule((StopSequence((20, 21)),))  # Video-LLaMA-like: "##" then "#"
    assert rule.holdback == 1 and rule.engine_stop_ids() == ()
    out, stopped = scan(rule, [5, 20, 6, 20, 21, 9])
    assert stopped and sum(out, []) == [5, 20, 6]


@pytest.fixture(scope="module")
def sp(demo_bundle: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(demo_bundle / "llm" / "tokenizer.model"))


def test_incremental_decoding_equals_the_whole_decode(sp: spm.SentencePieceProcessor) -> None:
    rng = random.Random(0)
    texts = ["héllo 世界 🙂 ok", "A red square.\n", "  two  spaces", "ünïcödé ✓✓ 1234567", "\n### Human: <Img>"]
    cases = [sp.encode(t) for t in texts]
    cases += [[rng.randrange(3, sp.get_piece_size()) for _ in range(rng.randrange(1, 40))] for _ in range(300)]
    for ids in cases:
        decoder = ReplyDecoder(sp)
        pieces, i = [], 0
        while i < len(ids):
            step = rng.randrange(1, 4)
            pieces.append(decoder.push(ids[i : i + step]))
            i += step
        pieces.append(decoder.finish())
        assert "".join(pieces) == sp.decode(ids), ids
        assert all("\ufffd" not in p for p in pieces[:-1]) or "\ufffd" in sp.decode(ids)


def test_incomplete_characters_wait(sp: spm.SentencePieceProcessor) -> None:
    ids = sp.encode("🙂")
    decoder = ReplyDecoder(sp)
    assert [decoder.push([t]) for t in ids[:-1]] == [""] * (len(ids) - 1)
    assert decoder.push(ids[-1:]) + decoder.finish() == "🙂"


def test_stop_strings_hold_back_a_possible_start_and_cut_at_the_first() -> None:
    stops = StopStrings(["circle", "end"])
    assert stops.push("the red ci") == "the r"  # the last 5 characters could begin "circle": held
    assert stops.push("rcle is") == "ed " and stops.hit
    assert stops.text == "the red " and stops.push("more") == "" and stops.finish() == ""
    none = StopStrings([])
    assert none.push("abc") == "abc" and none.finish() == "" and not none.hit
