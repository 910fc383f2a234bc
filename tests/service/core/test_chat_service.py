"""The chat core's event stream, with fakes at the two seams (engine, encoder pool).

What it must get right: PandaGPT's stop rule (`##` drops itself and the token before it; EOS only
itself; length keeps everything), streamed deltas that add up to the reply without ever showing
the held-back separator, stop strings, incomplete UTF-8, per-session locks and tenants, and that
a turn whose stream is abandoned commits nothing and aborts the engine request.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path

import pytest
import sentencepiece as spm

from encoders.media import MediaInput
from service.core.chat_service import ChatService, SamplingRequest, TurnResult
from service.core.reply import TextDelta
from service.errors import BadRequest, Conflict, NotFound, Unprocessable
from tests.fakes import ScriptedEngine, chat_service

pytestmark = pytest.mark.unit
EOS = 2


@pytest.fixture(scope="module")
def builder(demo_bundle: Path) -> Path:
    return demo_bundle


@pytest.fixture(scope="module")
def sp(demo_bundle: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(demo_bundle / "llm" / "tokenizer.model"))


@pytest.fixture(scope="module")
def stop_id(sp: spm.SentencePieceProcessor) -> int:
    return sp.piece_to_id("##")


def service(builder: Path, stop_id: int, engine: ScriptedEngine) -> ChatService:
    return chat_service(builder, engine)


IMAGE = [MediaInput("image", b"png bytes", "image[0]")]


async def run(chat: ChatService, request: SamplingRequest | None = None) -> tuple[list[TextDelta], TurnResult]:
    deltas: list[TextDelta] = []
    async with aclosing(chat.complete(None, [], "Hi", IMAGE, request or SamplingRequest())) as events:
        async for event in events:
            if isinstance(event, TurnResult):
                return deltas, event
            deltas.append(event)
    raise AssertionError("no TurnResult")


def ids(sp: spm.SentencePieceProcessor, text: str) -> list[int]:
    return sp.encode(text)


async def test_stop_token_drops_itself_and_the_separator_before_it(builder, sp, stop_id) -> None:
    reply = ids(sp, "A red square.")
    newline = sp.piece_to_id("<0x0A>")
    chunks = [[t] for t in reply] + [[newline], [stop_id]]
    deltas, result = await run(service(builder, stop_id, ScriptedEngine(chunks)))
    assert result.token_ids == reply and result.finish_reason == "stop"
    assert result.reply == sp.decode(reply) == "A red square."
    assert "".join(d.text for d in deltas) == result.reply  # the "\n" never leaked into the stream
    assert result.completion_tokens == len(reply) + 2


async def test_stop_token_first_gives_an_empty_reply(builder, sp, stop_id) -> None:
    _, result = await run(service(builder, stop_id, ScriptedEngine([[stop_id]])))
    assert result.token_ids == [] and result.reply == "" and result.finish_reason == "stop"


async def test_stop_token_inside_a_chunk(builder, sp, stop_id) -> None:
    reply = ids(sp, "two words")
    chunk = [*reply, sp.piece_to_id("<0x0A>"), stop_id]
    _, result = await run(service(builder, stop_id, ScriptedEngine([chunk])))
    assert result.token_ids == reply


async def test_eos_drops_only_itself(builder, sp, stop_id) -> None:
    reply = ids(sp, "blue circle")
    _, result = await run(service(builder, stop_id, ScriptedEngine([[t] for t in reply] + [[EOS]])))
    assert result.token_ids == reply and result.finish_reason == "stop"


async def test_length_keeps_every_token(builder, sp, stop_id) -> None:
    # The original dropped two tokens here too; a bug we do not reproduce.
    reply = ids(sp, "one two three\n")
    deltas, result = await run(service(builder, stop_id, ScriptedEngine([[t] for t in reply])))
    assert result.token_ids == reply and result.finish_reason == "length"
    assert "".join(d.text for d in deltas) == result.reply == sp.decode(reply)


async def test_incomplete_utf8_is_held_back(builder, sp, stop_id) -> None:
    reply = ids(sp, "héllo 世界 🙂 ok")
    deltas, result = await run(service(builder, stop_id, ScriptedEngine([[t] for t in reply])))
    assert all("\ufffd" not in d.text for d in deltas)
    assert "".join(d.text for d in deltas) == result.reply == "héllo 世界 🙂 ok"


async def test_stop_string_cuts_the_reply_and_aborts_the_engine(builder, sp, stop_id) -> None:
    reply = ids(sp, "the red circle is on the left")
    engine = ScriptedEngine([[t] for t in reply])
    deltas, result = await run(service(builder, stop_id, engine), SamplingRequest(stop=("circle",)))
    assert result.reply == "the red " and result.finish_reason == "stop"
    assert "".join(d.text for d in deltas) == result.reply
    assert len(engine.aborted) == 1  # the engine request did not run to its end


async def test_turns_commit_history_under_the_tenant(builder, sp, stop_id) -> None:
    chat = service(builder, stop_id, ScriptedEngine([ids(sp, "fine")]))
    events = [e async for e in chat.turn("alice", None, "Hello", IMAGE, SamplingRequest())]
    sid = events[-1].session_id
    assert sid and (await chat.get_session("alice", sid)).history() == [("Hello", "fine")]
    with pytest.raises(NotFound):
        await chat.get_session("bob", sid)  # another tenant: not found, not forbidden
    with pytest.raises(NotFound):
        [e async for e in chat.turn("bob", sid, "Hi", [], SamplingRequest())]


async def test_every_turn_of_a_session_asks_the_engine_for_the_same_affinity(builder, sp, stop_id) -> None:
    """Behind a router, the session's id is what keeps its turns on one engine (its prefix cache);
    a stateless completion has no session and asks for none."""
    engine = ScriptedEngine([ids(sp, "fine")])
    chat = service(builder, stop_id, engine)
    events = [e async for e in chat.turn("alice", None, "Hello", IMAGE, SamplingRequest())]
    sid = events[-1].session_id
    [e async for e in chat.turn("alice", sid, "And then?", [], SamplingRequest())]
    await run(chat)
    assert engine.affinities == [sid, sid, None]


async def test_first_turn_needs_media(builder, sp, stop_id) -> None:
    chat = service(builder, stop_id, ScriptedEngine([[5]]))
    with pytest.raises(Unprocessable):
        [e async for e in chat.turn(None, None, "Hello", [], SamplingRequest())]


async def test_concurrent_turn_conflicts_and_an_abandoned_turn_commits_nothing(builder, sp, stop_id) -> None:
    gate = asyncio.Event()
    engine = ScriptedEngine([[t] for t in ids(sp, "one two three four")], gate=gate)
    chat = service(builder, stop_id, engine)
    session = await chat.create_session("alice", {"app": "test"})
    sid = session.session_id
    first = chat.turn("alice", sid, "Hello", IMAGE, SamplingRequest())
    await anext(first)  # generating, blocked at the gate: the session is locked
    with pytest.raises(Conflict):
        await anext(chat.turn("alice", sid, "Again", IMAGE, SamplingRequest()))
    await first.aclose()  # the client went away
    assert len(engine.aborted) == 1
    assert (await chat.get_session("alice", sid)).turns == []  # nothing committed
    gate.set()
    events = [e async for e in chat.turn("alice", sid, "Hello", IMAGE, SamplingRequest())]  # the lock was released
    assert isinstance(events[-1], TurnResult)
    assert len((await chat.get_session("alice", sid)).turns) == 1


async def test_a_turn_renews_its_lease_and_a_dead_holders_lease_runs_out(builder, sp, stop_id) -> None:
    gate = asyncio.Event()
    chat = service(builder, stop_id, ScriptedEngine([[t] for t in ids(sp, "one two three four")], gate=gate))
    chat.lock_ttl_s = 0.3
    sid = (await chat.create_session("alice", {})).session_id
    first = chat.turn("alice", sid, "Hello", IMAGE, SamplingRequest())
    await anext(first)
    await asyncio.sleep(1.0)  # three TTLs: the running turn keeps its lock
    with pytest.raises(Conflict):
        await anext(chat.turn("alice", sid, "Again", IMAGE, SamplingRequest()))
    gate.set()
    assert isinstance([e async for e in first][-1], TurnResult)

    # A replica that died mid-turn never releases: its lease simply stops being renewed.
    assert await chat.store.acquire(sid, chat.lock_ttl_s) is not None
    await asyncio.sleep(0.4)
    events = [e async for e in chat.turn("alice", sid, "Again", IMAGE, SamplingRequest())]
    assert isinstance(events[-1], TurnResult)


async def test_each_tenant_has_its_own_prefix_cache_salt(builder, sp, stop_id) -> None:
    engine = ScriptedEngine([[5], [EOS]])
    chat = service(builder, stop_id, engine)
    for tenant in ("alice", "bob", "alice"):
        [e async for e in chat.turn(tenant, None, "Hello", IMAGE, SamplingRequest())]
    [e async for e in chat.complete("bob", [], "Hello", IMAGE, SamplingRequest())]
    [e async for e in chat.complete(None, [], "Hello", IMAGE, SamplingRequest())]  # auth off: one tenant
    alice, bob, alice_again, bob_stateless, nobody = engine.cache_salts
    assert alice == alice_again and bob == bob_stateless and alice != bob
    assert alice is not None and len(alice) <= 128 and "alice" not in alice  # vLLM's limit; the id stays here
    assert nobody is None


async def test_a_session_holds_a_bounded_number_of_media(builder, sp, stop_id) -> None:
    chat = service(builder, stop_id, ScriptedEngine([[5], [EOS]]))
    chat.max_session_media = 3
    sid = (await chat.create_session("alice", {})).session_id
    two = [MediaInput("image", b"a", "image[0]"), MediaInput("image", b"b", "image[1]")]
    [e async for e in chat.turn("alice", sid, "Hello", two, SamplingRequest())]
    with pytest.raises(BadRequest) as refused:
        [e async for e in chat.turn("alice", sid, "More", two, SamplingRequest())]
    assert refused.value.param == "image[1]"  # the first file past the cap
    assert len((await chat.get_session("alice", sid)).turns) == 1  # nothing committed
    [e async for e in chat.turn("alice", sid, "One more", two[:1], SamplingRequest())]  # room for one


async def test_a_cancelled_turn_still_unlocks_its_session(builder, sp, stop_id) -> None:
    gate = asyncio.Event()
    chat = service(builder, stop_id, ScriptedEngine([[t] for t in ids(sp, "one two three")], gate=gate))
    sid = (await chat.create_session("alice", {})).session_id

    async def consume() -> None:
        [e async for e in chat.turn("alice", sid, "Hello", IMAGE, SamplingRequest())]

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)  # generating, blocked at the gate
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)  # the shielded release completes
    gate.set()
    events = [e async for e in chat.turn("alice", sid, "Again", IMAGE, SamplingRequest())]
    assert isinstance(events[-1], TurnResult)
