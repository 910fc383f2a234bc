"""One contract, two stores: in memory and real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis
import torch

from service.core.session_store import MediaRecord, MemorySessionStore, RedisSessionStore, Session, SessionStore, Turn
from service.errors import Conflict, TooManyRequests

pytestmark = pytest.mark.integration
CAP = 3  # live sessions per tenant


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemorySessionStore(ttl_s=60, max_per_tenant=CAP)
        return
    async with redis.Redis.from_url(redis_url) as client:
        yield RedisSessionStore(client, ttl_s=60, max_per_tenant=CAP, prefix=f"pandaserve:test:{uuid.uuid4().hex}:")


def turn(message: str, media: list[MediaRecord] | None = None) -> Turn:
    return Turn(message=message, reply="r:" + message, finish_reason="stop", media=media or [], created_at=time.time())


def test_media_record_round_trips_the_soft_prompt() -> None:
    vectors = torch.randn(3, 16)
    record = MediaRecord(modality="image", sha256="ab" * 32, bytes=123, soft_prompt=vectors)
    assert torch.equal(MediaRecord.model_validate_json(record.model_dump_json()).soft_prompt, vectors)


async def test_commit_then_get(store: SessionStore) -> None:
    session = Session.new(None)
    session.turns.append(
        turn("hi", [MediaRecord(modality="image", sha256="0" * 64, bytes=10, soft_prompt=torch.ones(1, 4))])
    )
    await store.commit(session, expected_turns=None)
    loaded = await store.get(session.session_id)
    assert loaded == session
    assert loaded is not None and torch.equal(loaded.media()[0].soft_prompt, torch.ones(1, 4))


async def test_unknown_session_is_none(store: SessionStore) -> None:
    assert await store.get("sess_missing") is None


async def test_stale_commit_conflicts_and_changes_nothing(store: SessionStore) -> None:
    session = Session.new(None)
    session.turns.append(turn("one"))
    await store.commit(session, expected_turns=None)

    first = session.model_copy(deep=True)
    first.turns.append(turn("two"))
    second = session.model_copy(deep=True)
    second.turns.append(turn("other two"))
    await store.commit(first, expected_turns=1)
    with pytest.raises(Conflict):
        await store.commit(second, expected_turns=1)
    assert await store.get(session.session_id) == first


async def test_concurrent_commits_let_exactly_one_win(store: SessionStore) -> None:
    session = Session.new(None)
    candidates = []
    for i in range(8):
        c = session.model_copy(deep=True)
        c.turns.append(turn(f"t{i}"))
        candidates.append(c)
    results = await asyncio.gather(*(store.commit(c, None) for c in candidates), return_exceptions=True)
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if r is not None)


async def test_delete(store: SessionStore) -> None:
    session = Session.new(None)
    session.turns.append(turn("x"))
    await store.commit(session, None)
    assert await store.delete(session)
    assert await store.get(session.session_id) is None
    assert not await store.delete(session)


async def test_a_tenant_holds_at_most_its_cap_of_live_sessions(store: SessionStore) -> None:
    held = [Session.new("key_a") for _ in range(CAP)]
    for session in held:
        await store.commit(session, None)
    with pytest.raises(TooManyRequests, match=f"holds {CAP} live sessions"):
        await store.commit(Session.new("key_a"), None)
    await store.commit(Session.new("key_b"), None)  # another tenant's cap
    await store.commit(Session.new(None), None)  # auth off: no tenant, no cap
    held[0].turns.append(turn("a later turn"))
    await store.commit(held[0], 0)  # a later turn of a held session is not a new one
    assert await store.delete(held[1])
    await store.commit(Session.new("key_a"), None)  # the deleted one's place
    with pytest.raises(TooManyRequests):
        await store.commit(Session.new("key_a"), None)


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_an_expired_session_gives_its_place_back(kind: str, redis_url: str) -> None:
    async with redis.Redis.from_url(redis_url) as client:
        prefix = f"pandaserve:test:{uuid.uuid4().hex}:"
        one: SessionStore = (
            MemorySessionStore(ttl_s=1, max_per_tenant=1)
            if kind == "memory"
            else RedisSessionStore(client, ttl_s=1, max_per_tenant=1, prefix=prefix)
        )
        await one.commit(Session.new("key_a"), None)
        with pytest.raises(TooManyRequests):
            await one.commit(Session.new("key_a"), None)
        await asyncio.sleep(1.1)
        await one.commit(Session.new("key_a"), None)


async def test_memory_sessions_expire() -> None:
    store = MemorySessionStore(ttl_s=1)
    session = Session.new(None)
    session.turns.append(turn("x"))
    await store.commit(session, None)
    store._items[session.session_id] = store._items[session.session_id][:2] + (time.monotonic() - 1,)
    assert await store.get(session.session_id) is None


async def test_redis_sessions_carry_the_ttl(redis_url: str) -> None:
    store = RedisSessionStore(redis.Redis.from_url(redis_url), ttl_s=123, prefix=f"pandaserve:test:{uuid.uuid4().hex}:")
    session = Session.new(None)
    session.turns.append(turn("x"))
    await store.commit(session, None)
    ttl = await store.client.ttl(store.prefix + session.session_id)
    await store.client.aclose()
    assert 0 < ttl <= 123


async def test_locks_are_exclusive_expire_and_release_only_with_their_token(store: SessionStore) -> None:
    token = await store.acquire("sess_x", ttl_s=60)
    assert token is not None
    assert await store.acquire("sess_x", ttl_s=60) is None
    await store.release("sess_x", "not-the-token")
    assert await store.acquire("sess_x", ttl_s=60) is None
    await store.release("sess_x", token)
    short = await store.acquire("sess_x", ttl_s=0.05)
    assert short is not None
    await asyncio.sleep(0.1)  # a crashed holder's lock expires
    assert await store.acquire("sess_x", ttl_s=60) is not None


async def test_get_refreshes_the_ttl(redis_url: str) -> None:
    store = RedisSessionStore(redis.Redis.from_url(redis_url), ttl_s=100, prefix=f"pandaserve:test:{uuid.uuid4().hex}:")
    session = Session.new("tenant")
    await store.commit(session, None)
    await store.client.expire(store.prefix + session.session_id, 5)
    assert await store.get(session.session_id) == session
    assert await store.client.ttl(store.prefix + session.session_id) > 5
    await store.client.aclose()


async def test_a_lock_is_renewed_only_by_its_holder(store: SessionStore) -> None:
    token = await store.acquire("sess_r", ttl_s=0.2)
    assert token is not None
    assert not await store.renew("sess_r", "not-the-token", ttl_s=60)
    assert await store.renew("sess_r", token, ttl_s=60)
    await asyncio.sleep(0.3)  # past the first TTL: the renewal holds it
    assert await store.acquire("sess_r", ttl_s=60) is None
    await store.release("sess_r", token)
    assert not await store.renew("sess_r", token, ttl_s=60)  # a released lock is not revived


async def test_a_session_deleted_during_a_turn_stays_deleted(store: SessionStore) -> None:
    """Before, the first turn of a session made by POST /sessions re-created it on commit."""
    session = Session.new(None)
    await store.commit(session, expected_turns=None)  # POST /sessions: no turns yet
    during = session.model_copy(deep=True)
    during.turns.append(turn("first"))
    await store.delete(session)  # while the first turn generates
    with pytest.raises(Conflict):
        await store.commit(during, expected_turns=0)
    assert await store.get(session.session_id) is None


async def test_a_new_session_is_not_committed_over_an_existing_one(store: SessionStore) -> None:
    session = Session.new(None)
    await store.commit(session, expected_turns=None)
    with pytest.raises(Conflict):
        await store.commit(session, expected_turns=None)


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("down"),
        redis.TimeoutError("slow"),
        redis.OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        redis.ReadOnlyError("You can't write against a read only replica."),
        redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    ],
)
async def test_every_redis_failure_is_store_unavailable(error: Exception) -> None:
    from service.core.session_store import redis_available
    from service.errors import StoreUnavailable

    with pytest.raises(StoreUnavailable):
        async with redis_available():
            raise error


async def test_a_key_of_the_wrong_type_in_real_redis_is_store_unavailable(redis_url: str) -> None:
    from service.errors import StoreUnavailable

    async with redis.Redis.from_url(redis_url) as client:
        store = RedisSessionStore(client, ttl_s=60, prefix=f"pandaserve:test:{uuid.uuid4().hex}:")
        await client.set(store.prefix + "sess_w", "a string where a hash belongs", ex=60)
        with pytest.raises(StoreUnavailable):
            await store.get("sess_w")


async def test_the_memory_store_forgets_expired_sessions() -> None:
    """Before, an expired session stayed in the map until read again: memory grew with every session."""
    store = MemorySessionStore(ttl_s=1)
    old = [Session.new(None) for _ in range(5)]
    for session in old:
        await store.commit(session, None)
    store._items = {k: (t, j, time.monotonic() - 1) for k, (t, j, _) in store._items.items()}  # all expired
    store._swept_at -= store.SWEEP_EVERY_S
    await store.commit(Session.new(None), None)
    assert len(store._items) == 1
