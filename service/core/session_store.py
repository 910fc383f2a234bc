"""Conversation sessions: in memory for the embedded default, in Redis when REDIS_URL is set.

A session is stored as one JSON document plus its turn count. A turn is committed only after
generation succeeded, and only if the stored turn count is still the one the turn started from
(compare-and-set, atomic in Redis through a Lua script) — so a failed or raced turn leaves the
stored session byte-for-byte as it was.

Each tenant may hold at most `max_per_tenant` live sessions: the store keeps an index of a
tenant's sessions (each counted until the TTL after its last commit) and refuses a new one beyond
the cap (TooManyRequests, 429), so one key cannot fill the Redis every tenant shares.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Protocol

import redis.asyncio as redis
import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from encoders.media import tensor_from_base64, tensor_to_base64
from service.errors import Conflict, StoreUnavailable, TooManyRequests


def _tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return tensor_from_base64(value["data"], tuple(value["shape"]))


def _stored(tensor: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(tensor.shape), "data": tensor_to_base64(tensor)}


# A tensor in memory; its shape and its float32 little-endian values (base64) in the stored JSON.
Float32Tensor = Annotated[
    torch.Tensor,
    PlainValidator(_tensor),
    PlainSerializer(_stored, return_type=dict),
    WithJsonSchema({"type": "object", "properties": {"shape": {"type": "array"}, "data": {"type": "string"}}}),
]


# What `Session.new` makes; the edge refuses anything else before it can reach a store key.
SESSION_ID_PATTERN = r"^sess_[0-9a-f]{32}$"


class MediaRecord(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    modality: str
    sha256: str
    bytes: int
    # The medium's soft prompt [n, hidden], as the encoders answered it: every later turn's prompt
    # holds it again, with no encoder work.
    soft_prompt: Float32Tensor
    # Video-LLaMA, a video: its audio track's soft prompt (None: the video was served without its
    # sound) and its timestamp sentence (encoders.media.SoftPrompt).
    audio_track: Float32Tensor | None = None
    timestamps: str = ""

    def __eq__(self, other: object) -> bool:  # tensors compare element-wise: say what equal means
        return (
            isinstance(other, MediaRecord)
            and (self.modality, self.sha256, self.bytes, self.timestamps)
            == (other.modality, other.sha256, other.bytes, other.timestamps)
            and torch.equal(self.soft_prompt, other.soft_prompt)
            and _same(self.audio_track, other.audio_track)
        )


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and torch.equal(a, b))


class Turn(BaseModel):
    message: str
    reply: str
    finish_reason: str
    media: list[MediaRecord] = Field(default_factory=list)
    created_at: float


class Session(BaseModel):
    session_id: str
    created_at: float
    # The tenant (the id of the API key) that created it; None when auth is off. Stored as "owner" before.
    tenant: str | None = Field(default=None, validation_alias=AliasChoices("tenant", "owner"))
    metadata: dict[str, str] = Field(default_factory=dict)
    turns: list[Turn] = Field(default_factory=list)
    # The served model whose conversation it is (its latest turn's); None before the first turn.
    model: str | None = None

    @classmethod
    def new(cls, tenant: str | None, metadata: dict[str, str] | None = None) -> Session:
        return cls(
            session_id=f"sess_{uuid.uuid4().hex}",  # SESSION_ID_PATTERN
            created_at=time.time(),
            tenant=tenant,
            metadata=metadata or {},
        )

    def media(self) -> list[MediaRecord]:
        return [m for turn in self.turns for m in turn.media]

    def history(self) -> list[tuple[str, str]]:
        return [(t.message, t.reply) for t in self.turns]


class SessionStore(Protocol):
    async def get(self, session_id: str) -> Session | None:
        """The session, its TTL refreshed (sessions expire after a TTL without use)."""
        ...

    async def commit(self, session: Session, expected_turns: int | None) -> None:
        """Store `session` if the stored copy still has `expected_turns` turns (None: if there is none
        yet), else Conflict. A session deleted during a turn stays deleted. A new session beyond its
        tenant's cap: TooManyRequests."""
        ...

    async def delete(self, session: Session) -> bool: ...

    async def acquire(self, session_id: str, ttl_s: float) -> str | None:
        """Lock the session for one turn: a token to release it with, or None if it is locked.
        The lock expires after `ttl_s` unless renewed, so a crashed replica cannot hold it for long."""
        ...

    async def renew(self, session_id: str, token: str, ttl_s: float) -> bool:
        """Extend the lock to `ttl_s` from now, if `token` still holds it (else False)."""
        ...

    async def release(self, session_id: str, token: str) -> None:
        """Unlock, if `token` still holds the lock."""
        ...

    async def ping(self) -> None: ...


class MemorySessionStore:
    SWEEP_EVERY_S = 60.0

    def __init__(self, ttl_s: int, max_per_tenant: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.max_per_tenant = max_per_tenant
        self._items: dict[str, tuple[int, str, float]] = {}  # id -> (turns, json, expires_at)
        self._tenants: dict[str, set[str]] = {}  # tenant -> its session ids (some perhaps expired)
        self._locks: dict[str, tuple[str, float]] = {}  # id -> (token, expires_at)
        self._swept_at = time.monotonic()

    def _sweep(self) -> None:
        """Forget expired sessions and locks (Redis expires keys itself; this map would only grow)."""
        now = time.monotonic()
        if now - self._swept_at < self.SWEEP_EVERY_S:
            return
        self._swept_at = now
        self._items = {k: v for k, v in self._items.items() if v[2] > now}
        self._locks = {k: v for k, v in self._locks.items() if v[1] > now}
        self._tenants = {t: live for t, ids in self._tenants.items() if (live := ids & self._items.keys())}

    def _live(self, session_id: str) -> tuple[int, str, float] | None:
        item = self._items.get(session_id)
        if item is not None and item[2] <= time.monotonic():
            del self._items[session_id]
            return None
        return item

    async def get(self, session_id: str) -> Session | None:
        item = self._live(session_id)
        if item is None:
            return None
        self._items[session_id] = (item[0], item[1], time.monotonic() + self.ttl_s)
        return Session.model_validate_json(item[1])

    async def commit(self, session: Session, expected_turns: int | None) -> None:
        self._sweep()
        # No await between the check and the write: atomic on the event loop.
        item = self._live(session.session_id)
        if (item[0] if item else None) != expected_turns:
            raise Conflict("the session changed during this turn; retry", param="session_id")
        if session.tenant is not None:
            ids = self._tenants.setdefault(session.tenant, set())
            if expected_turns is None:
                ids -= {k for k in ids if not self._live(k)}
                if len(ids) >= self.max_per_tenant:
                    raise _too_many_sessions(self.max_per_tenant)
            ids.add(session.session_id)
        expires = time.monotonic() + self.ttl_s
        self._items[session.session_id] = (len(session.turns), session.model_dump_json(), expires)

    async def delete(self, session: Session) -> bool:
        if session.tenant is not None:
            self._tenants.get(session.tenant, set()).discard(session.session_id)
        return self._items.pop(session.session_id, None) is not None

    async def acquire(self, session_id: str, ttl_s: float) -> str | None:
        held = self._locks.get(session_id)
        if held is not None and held[1] > time.monotonic():
            return None
        token = uuid.uuid4().hex
        self._locks[session_id] = (token, time.monotonic() + ttl_s)
        return token

    async def renew(self, session_id: str, token: str, ttl_s: float) -> bool:
        held = self._locks.get(session_id)
        if held is None or held[0] != token or held[1] <= time.monotonic():
            return False
        self._locks[session_id] = (token, time.monotonic() + ttl_s)
        return True

    async def release(self, session_id: str, token: str) -> None:
        if self._locks.get(session_id, ("",))[0] == token:
            del self._locks[session_id]

    async def ping(self) -> None:
        return None


def _too_many_sessions(cap: int) -> TooManyRequests:
    return TooManyRequests(
        f"this API key holds {cap} live sessions, its cap; delete one or wait until one expires",
        retry_after_s=60,
    )


def connect_redis(url: str) -> redis.Redis:
    """The Redis client every part shares. A command that meets a dead connection (one a Redis restart
    broke while it sat in the pool) reconnects and is sent once more, so the first request after a
    restart is not a 503; a Redis that is really gone still fails fast (two short tries), as 503."""
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1)
    return redis.from_url(url, retry=retry, retry_on_error=[RedisConnectionError, RedisTimeoutError])


@asynccontextmanager
async def redis_available() -> AsyncIterator[None]:
    """Any Redis failure -> StoreUnavailable (503): unreachable (redis-py reconnects on the next call
    once it is back), out of memory, read-only (a replica mid-failover), or a key of the wrong type."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreUnavailable("the session store (Redis) is unavailable; retry shortly") from exc


# KEYS[1] session hash, KEYS[2] (with a tenant) the tenant's index: a sorted set of session id ->
# when it expires (ms). ARGV: expected turns (-1: the session must not exist yet), new turns, json,
# ttl seconds, now (ms), the tenant's cap, session id.
# Returns 1 when stored, 0 when the session changed, -1 when a new session is over the tenant's cap.
# `#!lua` (Redis 7): out of memory, the script is refused before it starts. Without it Redis checks
# only the first write, and the index's ZREMRANGEBYSCORE (which needs no memory) would let the
# writes after it through past maxmemory.
_COMMIT = """#!lua
local turns = redis.call('HGET', KEYS[1], 'turns')
if (turns or '-1') ~= ARGV[1] then return 0 end
if KEYS[2] then
  local now, ttl_ms = tonumber(ARGV[5]), tonumber(ARGV[4]) * 1000
  if ARGV[1] == '-1' then
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
    if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then return -1 end
  end
  redis.call('ZADD', KEYS[2], now + ttl_ms, ARGV[7])
  redis.call('PEXPIRE', KEYS[2], ttl_ms)
end
redis.call('HSET', KEYS[1], 'turns', ARGV[2], 'data', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


# KEYS[1] lock key; ARGV[1] token. Deletes the lock only if this token still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] lock key; ARGV[1] token, ARGV[2] milliseconds. Extends the lock only if this token holds it.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


# v2: media records hold soft prompts (v1 held ImageBind embeddings); v1 sessions read as absent.
KEY_PREFIX = "pandaserve:session:v2:"


class RedisSessionStore:
    def __init__(self, client: redis.Redis, ttl_s: int, max_per_tenant: int = 10_000, prefix: str = KEY_PREFIX) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.max_per_tenant = max_per_tenant
        self.prefix = prefix
        self._commit = self.client.register_script(_COMMIT)
        self._release = self.client.register_script(_RELEASE)
        self._renew = self.client.register_script(_RENEW)

    async def get(self, session_id: str) -> Session | None:
        async with redis_available():
            key = self.prefix + session_id
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hget(key, "data")
                pipe.expire(key, self.ttl_s)  # refreshed on use
                data, _ = await pipe.execute()
            return Session.model_validate_json(data) if data else None

    def _index(self, tenant: str | None) -> list[str]:
        """The key of the tenant's index of sessions, if it has one (auth off: no cap, no index)."""
        return [] if tenant is None else [f"{self.prefix}tenant:{tenant}"]

    async def commit(self, session: Session, expected_turns: int | None) -> None:
        expected = -1 if expected_turns is None else expected_turns
        args: list[str | int] = [expected, len(session.turns), session.model_dump_json(), self.ttl_s]
        args += [int(time.time() * 1000), self.max_per_tenant, session.session_id]
        keys = [self.prefix + session.session_id, *self._index(session.tenant)]
        async with redis_available():
            stored = await self._commit(keys=keys, args=args)
        if stored == -1:
            raise _too_many_sessions(self.max_per_tenant)
        if not stored:
            raise Conflict("the session changed during this turn; retry", param="session_id")

    async def delete(self, session: Session) -> bool:
        async with redis_available(), self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.prefix + session.session_id)
            for index in self._index(session.tenant):
                pipe.zrem(index, session.session_id)
            deleted, *_ = await pipe.execute()
            return bool(deleted)

    async def acquire(self, session_id: str, ttl_s: float) -> str | None:
        async with redis_available():
            token = uuid.uuid4().hex
            locked = await self.client.set(f"{self.prefix}{session_id}:lock", token, nx=True, px=int(ttl_s * 1000))
            return token if locked else None

    async def renew(self, session_id: str, token: str, ttl_s: float) -> bool:
        async with redis_available():
            return bool(await self._renew(keys=[f"{self.prefix}{session_id}:lock"], args=[token, int(ttl_s * 1000)]))

    async def release(self, session_id: str, token: str) -> None:
        async with redis_available():
            await self._release(keys=[f"{self.prefix}{session_id}:lock"], args=[token])

    async def ping(self) -> None:
        async with redis_available():
            await self.client.ping()
