"""The chat core serving a Video-LLaMA bundle, with fakes at the two seams: each medium placed in
the turn that sent it, the cleaned reply kept in the history, history trimmed to the context."""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from encoders.media import MediaInput
from service.core.chat_service import ChatService, SamplingRequest, TurnResult
from service.core.prompt import PromptAssembler
from service.errors import BadRequest
from tests.fakes import ScriptedEngine, chat_service, videollama_bundle

pytestmark = pytest.mark.unit

VISUAL_SYSTEM = (
    "You are able to understand the visual content that the user provides. "
    "Follow the instructions carefully and explain your answers in detail."
)
IMAGE = "<Image><ImageHere></Image>  "


@pytest.fixture(scope="module")
def bundle(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return videollama_bundle(demo_bundle, tmp_path_factory.mktemp("videollama"))


@pytest.fixture(scope="module")
def sp(demo_bundle: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(demo_bundle / "llm" / "tokenizer.model"))


def scripted_reply(sp: spm.SentencePieceProcessor) -> ScriptedEngine:
    """Every request answers " Assistant: A red square. " and then "###" (one piece after a space)."""
    return ScriptedEngine([[t] for t in sp.encode(" Assistant: A red square. ")] + [[sp.piece_to_id("▁###")]])


async def turn(chat: ChatService, session_id: str | None, message: str, images: int = 0) -> TurnResult:
    media = [MediaInput("image", f"image {i}".encode(), f"image[{i}]") for i in range(images)]
    async with aclosing(chat.turn(None, session_id, message, media, SamplingRequest())) as events:
        async for event in events:
            if isinstance(event, TurnResult):
                return event
    raise AssertionError("no TurnResult")


def rows(prompt: str, sp: spm.SentencePieceProcessor, table: PromptAssembler) -> torch.Tensor:
    """The original's prompt embeddings: split at each placeholder, BOS on the first piece only; the
    fake encoder's soft prompt (one row of 0.01: the first file of each request) in each slot."""
    pieces = prompt.split("<ImageHere>")
    slot = torch.full((1, table.hidden_size), 0.01)
    out = [table.embeddings[[1, *sp.encode(pieces[0])]]]
    for piece in pieces[1:]:
        out += [slot, table.embeddings[sp.encode(piece)]]
    return torch.cat(out)


async def test_media_in_their_turns_and_the_cleaned_reply_in_the_history(
    bundle: Path, sp: spm.SentencePieceProcessor
) -> None:
    engine = scripted_reply(sp)
    chat = chat_service(bundle, engine)
    first = await turn(chat, None, "What is it?", images=1)
    assert (first.reply, first.finish_reason) == ("A red square.", "stop")
    second = await turn(chat, first.session_id, "And this one?", images=1)
    session = await chat.get_session(None, second.session_id or "")
    assert [t.reply for t in session.turns] == ["A red square.", "A red square."]
    expected = (
        f"{VISUAL_SYSTEM}###Human: {IMAGE}What is it?###Assistant: A red square."
        f"###Human: {IMAGE}And this one?###Assistant:"
    )
    assert torch.equal(engine.prompts[1], rows(expected, sp, chat.prompts))


async def test_history_is_trimmed_to_leave_room_for_the_reply(bundle: Path, sp: spm.SentencePieceProcessor) -> None:
    engine = scripted_reply(sp)
    chat = chat_service(bundle, engine)
    session_id = (await turn(chat, None, "What is it?", images=1)).session_id
    for question in ("Is it big? " * 10, "Is it small? " * 10):
        await turn(chat, session_id, question)
    # Room for the prompt without the oldest media-free exchange (the second) and the default 64 new tokens.
    trimmed = (
        f"{VISUAL_SYSTEM}###Human: {IMAGE}What is it?###Assistant: A red square."
        f"###Human: {'Is it small? ' * 10}###Assistant: A red square.###Human: Last?###Assistant:"
    )
    expected = rows(trimmed, sp, chat.prompts)
    engine.max_model_len = len(expected) + 64
    result = await turn(chat, session_id, "Last?")
    assert torch.equal(engine.prompts[-1], expected) and result.prompt_tokens == len(expected)
    # The media's turn stays whatever the budget: a prompt that still fills the context is refused.
    engine.max_model_len = 40
    with pytest.raises(BadRequest, match="fills the context"):
        await turn(chat, session_id, "Again?")
