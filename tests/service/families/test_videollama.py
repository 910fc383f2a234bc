"""Video-LLaMA's templates, placeholders, slots, stop rules, clean-up and trimming against prompt
strings and token ids written here from the original code's facts (conversation_video.py, the demos).

The reference tokenizes as the original's `get_context_emb` did: the whole prompt string split at
each `<ImageHere>`, each piece through the slow tokenizer (BOS on the first only), which split its
text at the special tokens `<s>`/`</s>` and gave each run between them SentencePiece's encoding.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from pydantic import ValidationError

from encoders.videollama.preprocess import frame_indices, timestamp_sentence
from service.bundle import load_bundle
from service.core.prompt import PromptAssembler
from service.core.reply import Reply
from service.families import generation_defaults, load_family
from service.families.base import Medium, Segment
from service.families.videollama import VideoLlama, clean_reply
from tests.fakes import videollama_bundle

pytestmark = pytest.mark.unit

HIDDEN = 8
VISUAL_SYSTEM = (
    "You are able to understand the visual content that the user provides. "
    "Follow the instructions carefully and explain your answers in detail."
)
AUDIO_VIDEO = (
    "Close your eyes, open your ears and you imagine only based on the sound that: <ImageHere>."
    "                 "  # 17 spaces
    "Close your ears, open your eyes and you see that <Video><ImageHere></Video>."
    "                  "  # 18 spaces
    "Now answer my question based on what you have just seen and heard."
)
# An 80-frame video at 8 fps: frames 0, 10, ..., 70 at 0, 1.25, ..., 8.75 s; Python's round ties to even.
TIMESTAMPS = "The video contains 8 frames sampled at 0.0, 1.2, 2.5, 3.8, 5.0, 6.2, 7.5, 8.8 seconds. "


@pytest.fixture(scope="module")
def sp(demo_bundle: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(demo_bundle / "llm" / "tokenizer.model"))


def vectors(rows: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, HIDDEN, generator=torch.Generator().manual_seed(seed))


IMAGE = Medium("image", vectors(32, 1))
VIDEO = Medium("video", vectors(32, 2), timestamps=TIMESTAMPS)
TRACK = vectors(8, 3)
VIDEO_WITH_AUDIO = Medium("video", vectors(32, 4), audio_track=TRACK, timestamps=TIMESTAMPS)


def slow_tokenizer(text: str, sp: spm.SentencePieceProcessor, bos: bool) -> list[int]:
    """LlamaTokenizer(use_fast=False) of transformers 4.28: special tokens split out of the text
    (no stripping around them: they are AddedTokens with lstrip/rstrip off), every other run encoded."""
    ids = [sp.bos_id()] if bos else []
    for run in re.split(r"(<s>|</s>)", text):
        ids += {"<s>": [sp.bos_id()], "</s>": [sp.eos_id()]}.get(run) or sp.encode(run)
    return ids


def reference(prompt: str, slots: list[torch.Tensor], sp: spm.SentencePieceProcessor) -> list[Segment]:
    pieces = prompt.split("<ImageHere>")
    assert len(pieces) == len(slots) + 1
    out: list[Segment] = [slow_tokenizer(pieces[0], sp, bos=True)]
    for slot, piece in zip(slots, pieces[1:], strict=True):
        out += [slot, slow_tokenizer(piece, sp, bos=False)]
    return out


def assert_same(actual: list[Segment], expected: list[Segment]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        if isinstance(e, list):
            assert a == e
        else:
            assert isinstance(a, torch.Tensor) and torch.equal(a, e)


def family(sp: spm.SentencePieceProcessor, template: str = "vicuna", audio_branch: bool = True) -> VideoLlama:
    return VideoLlama(sp, "vicuna" if template == "vicuna" else "llama2", audio_branch)


def test_sentences_are_the_originals_literals() -> None:
    assert AUDIO_VIDEO.count(" " * 17 + "Close your ears") == 1 and AUDIO_VIDEO.count(" " * 18 + "Now") == 1
    # The sentence a video's Medium carries is the preprocessing's, placed by the family as it is.
    assert timestamp_sentence(frame_indices(80), 8.0) == TIMESTAMPS


def test_vicuna_video_of_the_audiovideo_demo(sp: spm.SentencePieceProcessor) -> None:
    prompt = family(sp).prompt([], "What is the dog doing?", [VIDEO])
    expected = f"###Human: <Video><ImageHere></Video> {TIMESTAMPS} What is the dog doing?###Assistant:"
    assert_same(prompt, reference(expected, [VIDEO.soft_prompt], sp))
    assert prompt[0][:1] == [1]  # BOS once, first
    assert [1 in s for s in prompt[2:] if isinstance(s, list)] == [False]


def test_vicuna_video_of_the_video_demo_has_the_visual_system_prompt(sp: spm.SentencePieceProcessor) -> None:
    prompt = family(sp, audio_branch=False).prompt([], "What is the dog doing?", [VIDEO])
    expected = f"{VISUAL_SYSTEM}###Human: <Video><ImageHere></Video> {TIMESTAMPS} What is the dog doing?###Assistant:"
    assert_same(prompt, reference(expected, [VIDEO.soft_prompt], sp))


def test_vicuna_image_two_turns(sp: spm.SentencePieceProcessor) -> None:
    history = [("What is the dog doing?", "The dog is skateboarding.")]
    prompt = family(sp).prompt(history, "Is it outdoors?", [IMAGE])
    expected = (
        f"{VISUAL_SYSTEM}###Human: <Image><ImageHere></Image>  What is the dog doing?###Assistant: "
        "The dog is skateboarding.###Human: Is it outdoors?###Assistant:"
    )
    assert_same(prompt, reference(expected, [IMAGE.soft_prompt], sp))


def test_vicuna_video_with_its_audio_track_audio_slot_first(sp: spm.SentencePieceProcessor) -> None:
    prompt = family(sp).prompt([], "What do you hear?", [VIDEO_WITH_AUDIO])
    expected = f"###Human: {AUDIO_VIDEO} What do you hear?###Assistant:"  # no timestamp sentence
    assert_same(prompt, reference(expected, [TRACK, VIDEO_WITH_AUDIO.soft_prompt], sp))
    assert [len(s) for s in prompt if isinstance(s, torch.Tensor)] == [8, 32]


def test_llama2_video_two_turns(sp: spm.SentencePieceProcessor) -> None:
    vl = family(sp, "llama2")
    first = f"[INST] <<SYS>>\n\n<</SYS>>\n\n<Video><ImageHere></Video> {TIMESTAMPS} What is the dog doing? [/INST]"
    assert_same(vl.prompt([], "What is the dog doing?", [VIDEO]), reference(first, [VIDEO.soft_prompt], sp))
    history = [("What is the dog doing?", "The dog is skateboarding.")]
    second = first + " The dog is skateboarding. </s><s>[INST] Is it outdoors? [/INST]"
    prompt = vl.prompt(history, "Is it outdoors?", [VIDEO])
    assert_same(prompt, reference(second, [VIDEO.soft_prompt], sp))
    # The template's "</s><s>" are EOS and BOS ids, between the reply's and the question's text.
    assert isinstance(prompt[-1], list)
    tail = [2, 1, *sp.encode("[INST] Is it outdoors? [/INST]")]
    assert prompt[-1][-len(tail) :] == tail


def test_llama2_image_has_the_visual_system_prompt(sp: spm.SentencePieceProcessor) -> None:
    prompt = family(sp, "llama2").prompt([], "Describe it.", [IMAGE])
    expected = f"[INST] <<SYS>>\n{VISUAL_SYSTEM}\n<</SYS>>\n\n<Image><ImageHere></Image>  Describe it. [/INST]"
    assert_same(prompt, reference(expected, [IMAGE.soft_prompt], sp))


def test_several_media_each_with_its_placeholder_in_its_turn_in_order(sp: spm.SentencePieceProcessor) -> None:
    audio = Medium("audio", vectors(8, 5), turn=1)
    video = Medium("video", vectors(32, 6), timestamps="The video contains 2 frames sampled at 0.0, 0.5 seconds. ")
    history = [("Compare them.", "Both show a dog.")]
    prompt = family(sp).prompt(history, "And this?", [IMAGE, video, audio])
    expected = (
        f"{VISUAL_SYSTEM}###Human: <Image><ImageHere></Image>  <Video><ImageHere></Video> "
        "The video contains 2 frames sampled at 0.0, 0.5 seconds.  Compare them.###Assistant: Both show a dog."
        "###Human: Close your eyes, open your ears and you imagine only based on the sound that: <ImageHere>."
        " And this?###Assistant:"
    )
    assert_same(prompt, reference(expected, [IMAGE.soft_prompt, video.soft_prompt, audio.soft_prompt], sp))


def test_slots_keep_their_rows_in_the_assembled_prompt(demo_bundle: Path, sp: spm.SentencePieceProcessor) -> None:
    prompts = PromptAssembler.load(demo_bundle / "llm")
    hidden = prompts.hidden_size
    track = torch.randn(8, hidden)
    video = Medium("video", torch.randn(32, hidden), audio_track=track, timestamps=TIMESTAMPS)
    segments = family(sp).prompt([], "What happens?", [video])
    embeds = prompts.assemble(segments)
    start = len(segments[0])
    assert embeds.shape[0] == sum(len(s) for s in segments)
    assert torch.equal(embeds[start : start + 8], track)
    start += 8 + len(segments[2])
    assert torch.equal(embeds[start : start + 32], video.soft_prompt)


def test_user_text_is_literal(sp: spm.SentencePieceProcessor) -> None:
    prompt = family(sp, "llama2").prompt([("a </s><s> b", "c <ImageHere> d")], "</s> <ImageHere>", [IMAGE])
    assert sum(isinstance(s, torch.Tensor) for s in prompt) == 1
    ids = [i for s in prompt if isinstance(s, list) for i in s]
    assert ids.count(1) == 2 and ids.count(2) == 1  # BOS, and the template's one "</s><s>" between turns


def test_empty_reply_is_skipped_as_the_templates_skip_it(sp: spm.SentencePieceProcessor) -> None:
    history = [("What?", "")]
    vicuna = family(sp).prompt(history, "Again?", [VIDEO])
    expected = f"###Human: <Video><ImageHere></Video> {TIMESTAMPS} What?###Assistant:Human: Again?###Assistant:"
    assert_same(vicuna, reference(expected, [VIDEO.soft_prompt], sp))


def stop_text(vl: VideoLlama, reply: str, stop: list[int], then: str = " more") -> str:
    """The reply the service returns when the model writes `reply`, then `stop`, then `then`."""
    tokens = [*vl.tokenizer.encode(reply), *stop, *vl.tokenizer.encode(then)]
    out = Reply(vl.stop_rule, vl.tokenizer, (), False)
    for token in tokens:
        out.push([token], None)
        if out.stopped:
            break
    out.finish()
    return vl.clean_reply(out.text)


def test_vicuna_stops_on_both_tokenizations_of_the_separator(sp: spm.SentencePieceProcessor) -> None:
    vl = family(sp)
    triple, double, single = sp.piece_to_id("▁###"), sp.piece_to_id("##"), sp.piece_to_id("#")
    assert sp.encode("###") == [triple] and sp.encode("Hello.###")[-2:] == [double, single]  # as 835 / 2277 29937
    assert {s.tokens: s.drop_before for s in vl.stop_rule.sequences} == {
        (triple,): 0,
        (double, single): 0,
        (sp.eos_id(),): 0,
    }
    assert vl.stop_rule.holdback == 1 and set(vl.stop_rule.engine_stop_ids()) == {triple, sp.eos_id()}
    assert stop_text(vl, "The dog is skateboarding.", [double, single]) == "The dog is skateboarding."
    assert stop_text(vl, "The dog is skateboarding.", [triple]) == "The dog is skateboarding."
    assert stop_text(vl, "The dog.", [sp.eos_id()]) == "The dog."
    # `##` alone does not stop Video-LLaMA (it does PandaGPT): the text goes on.
    assert stop_text(vl, "A", [double], "b") == "A## b"


def test_llama2_stops_on_eos_only(sp: spm.SentencePieceProcessor) -> None:
    vl = family(sp, "llama2")
    assert [s.tokens for s in vl.stop_rule.sequences] == [(sp.eos_id(),)] and vl.stop_rule.holdback == 0
    assert stop_text(vl, " The dog.", [sp.eos_id()]) == "The dog."


def test_reply_clean_up_as_the_demo() -> None:
    assert clean_reply("The dog.###Human: more", "vicuna") == "The dog."
    assert clean_reply("  Assistant: The dog. \n", "vicuna") == "The dog."
    assert clean_reply("a Assistant: b Assistant: c", "vicuna") == "c"
    assert clean_reply("The dog. </s> more", "llama2") == "The dog."
    assert clean_reply("ASSISTANT: The dog.", "llama2") == "The dog."
    assert clean_reply("Assistant: kept ###", "llama2") == "Assistant: kept ###"


def test_history_is_trimmed_oldest_media_free_exchange_first(sp: spm.SentencePieceProcessor) -> None:
    vl = family(sp)
    later_image = Medium("image", vectors(32, 7), turn=2)
    history = [(f"Question {i}?", f"Answer {i} " + "word " * 20) for i in range(5)]
    media = [VIDEO, later_image]
    whole = vl.prompt(history, "Last?", media)
    length = sum(len(s) for s in whole)
    assert sum(len(s) for s in vl.prompt(history, "Last?", media, budget=length)) == length

    def rendered(kept: list[int]) -> str:
        text = "###"
        for i in kept:
            place = {0: f"<Video><ImageHere></Video> {TIMESTAMPS} ", 2: "<Image><ImageHere></Image>  "}.get(i, "")
            text += f"Human: {place}{history[i][0]}###Assistant: {history[i][1]}###"
        return text + "Human: Last?###Assistant:"

    # Exchanges 0 and 2 carried media and stay; 1, 3 and 4 go, oldest first, until the prompt fits.
    for kept in ([0, 2, 3, 4], [0, 2, 4], [0, 2]):
        expected = reference(rendered(kept), [VIDEO.soft_prompt, later_image.soft_prompt], sp)
        budget = sum(len(s) for s in expected)
        assert_same(vl.prompt(history, "Last?", media, budget=budget), expected)
        assert_same(vl.prompt(history, "Last?", media, budget=budget + 1), expected)
    # Nothing more may go: the prompt comes back over the budget, whole at its start (BOS, media),
    # for the chat core to refuse.
    smallest = vl.prompt(history, "Last?", media, budget=10)
    assert_same(smallest, reference(rendered([0, 2]), [VIDEO.soft_prompt, later_image.soft_prompt], sp))


def test_a_conversation_needs_a_medium_and_takes_only_video_llamas(sp: spm.SentencePieceProcessor) -> None:
    with pytest.raises(ValueError, match="starts with a medium"):
        family(sp).prompt([], "Hi", [])
    with pytest.raises(ValueError, match="not thermal"):
        family(sp).prompt([], "Hi", [Medium("thermal", vectors(1, 0))])


def test_the_manifest_selects_the_family_and_template(demo_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(videollama_bundle(demo_bundle, tmp_path / "vicuna"))
    vl = load_family(bundle)
    assert isinstance(vl, VideoLlama) and vl.template == "vicuna" and vl.audio_branch and vl.lora is None
    defaults = generation_defaults(vl, bundle)
    assert (defaults.max_tokens, defaults.temperature, defaults.top_p, defaults.top_k) == (300, 1.0, 0.9, 50)

    vl_only = load_family(
        load_bundle(videollama_bundle(demo_bundle, tmp_path / "l2", template="llama2", modalities=["image", "video"]))
    )
    assert isinstance(vl_only, VideoLlama) and vl_only.template == "llama2" and not vl_only.audio_branch
    assert load_bundle(demo_bundle).manifest.family == "pandagpt"  # the default: existing bundles unchanged


@pytest.mark.parametrize(
    "fields",
    [{"lora": "lora"}, {"stop_token_ids": [5]}, {"family": "pandagpt", "stop_token_ids": [5], "template": "vicuna"}],
)
def test_manifests_that_do_not_fit_their_family_are_refused(demo_bundle: Path, tmp_path: Path, fields: dict) -> None:
    with pytest.raises(ValidationError):
        load_bundle(videollama_bundle(demo_bundle, tmp_path, **fields))


def test_a_video_without_its_frame_times_is_refused(sp: spm.SentencePieceProcessor) -> None:
    with pytest.raises(ValueError, match="timestamp sentence"):
        family(sp).prompt([], "Hi", [Medium("video", vectors(32, 0))])
