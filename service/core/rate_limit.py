"""Per-tenant admission: a token bucket of requests per minute and a cap on requests in flight; and
per client address, failed authentications per minute (so keys cannot be guessed at speed).

A request in flight holds a slot of its own (an id), given back when it ends. In Redis each slot
also has a deadline: a replica that dies, or loses Redis as it ends a request, leaves its slots
behind, and they stop counting at their deadline instead of shrinking the tenant's cap for good.

In Redis when sessions are there (shared by every replica), in memory for the embedded default.
Over any limit: TooManyRequests (429) with Retry-After.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Protocol

import redis.asyncio as redis

from service.core.session_store import redis_available
from service.errors import TooManyRequests


class RateLimiter(Protocol):
    async def enter(self, tenant: str) -> str:
        """Admit one request (raises TooManyRequests): the id of the slot it holds until `leave`."""
        ...

    async def leave(self, tenant: str, slot: str) -> None: ...

    async def check_address(self, address: str) -> None:
        """Raise TooManyRequests while `address` has used up its failed authentications this minute."""
        ...

    async def failed_auth(self, address: str) -> None:
        """Count one failed authentication from `address` (a fixed one-minute window)."""
        ...


AUTH_WINDOW_S = 60


def _refused_by_failures(limit: int, wait_s: float) -> TooManyRequests:
    return TooManyRequests(
        f"{limit} failed authentications from this address in a minute; wait before trying again",
        retry_after_s=max(1, math.ceil(wait_s)),
    )


def _refused_by_rate(wait_s: float, rpm: int) -> TooManyRequests:
    return TooManyRequests(f"rate limit of {rpm} requests per minute reached", retry_after_s=max(1, math.ceil(wait_s)))


def _refused_by_concurrency(limit: int) -> TooManyRequests:
    return TooManyRequests(f"{limit} requests of this API key are already in flight", retry_after_s=1)


class MemoryRateLimiter:
    def __init__(self, rpm: int, concurrency: int, auth_failures: int = 20) -> None:
        self.rpm, self.concurrency, self.auth_failures = rpm, concurrency, auth_failures
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)
        self._in_flight: dict[str, set[str]] = {}  # tenant -> its slots
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, window start)

    async def enter(self, tenant: str) -> str:
        now = time.monotonic()
        tokens, at = self._buckets.get(tenant, (float(self.rpm), now))
        tokens = min(float(self.rpm), tokens + (now - at) * self.rpm / 60)
        if tokens < 1:
            raise _refused_by_rate((1 - tokens) * 60 / self.rpm, self.rpm)
        slots = self._in_flight.setdefault(tenant, set())
        if len(slots) >= self.concurrency:
            raise _refused_by_concurrency(self.concurrency)
        self._buckets[tenant] = (tokens - 1, now)
        slot = uuid.uuid4().hex
        slots.add(slot)
        return slot

    async def leave(self, tenant: str, slot: str) -> None:
        slots = self._in_flight.get(tenant, set())
        slots.discard(slot)
        if not slots:
            self._in_flight.pop(tenant, None)

    def _window(self, address: str) -> tuple[int, float]:
        count, start = self._failures.get(address, (0, 0.0))
        if time.monotonic() - start >= AUTH_WINDOW_S:
            self._failures.pop(address, None)  # also what keeps the map small
            return 0, time.monotonic()
        return count, start

    async def check_address(self, address: str) -> None:
        count, start = self._window(address)
        if count >= self.auth_failures:
            raise _refused_by_failures(self.auth_failures, start + AUTH_WINDOW_S - time.monotonic())

    async def failed_auth(self, address: str) -> None:
        count, start = self._window(address)
        self._failures[address] = (count + 1, start)


# KEYS: bucket, in-flight slots (a sorted set: slot id -> its deadline). ARGV: rpm, concurrency, now
# (ms), the new slot's id, the deadline's distance (ms).
# Returns 0 when admitted, -1 when over the concurrency cap, else the ms to wait for a token.
# `#!lua`: refused whole when Redis is out of memory (see session_store._COMMIT).
_ENTER = """#!lua
local rpm, cap, now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or rpm, tonumber(state[2]) or now
tokens = math.min(rpm, tokens + (now - at) * rpm / 60000)
if tokens < 1 then return math.ceil((1 - tokens) * 60000 / rpm) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)  -- slots past their deadline: never given back
if redis.call('ZCARD', KEYS[2]) >= cap then return -1 end
redis.call('HSET', KEYS[1], 'tokens', tokens - 1, 'at', now)
redis.call('PEXPIRE', KEYS[1], 120000)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[4])
redis.call('PEXPIRE', KEYS[2], ttl)
return 0
"""


class RedisRateLimiter:
    def __init__(
        self,
        client: redis.Redis,
        rpm: int,
        concurrency: int,
        auth_failures: int = 20,
        slot_deadline_s: float = 600.0,
        prefix: str = "pandaserve:rate:",
    ) -> None:
        self.client, self.rpm, self.concurrency, self.prefix = client, rpm, concurrency, prefix
        self.auth_failures = auth_failures
        self.slot_deadline_ms = int(slot_deadline_s * 1000)
        self._enter = client.register_script(_ENTER)

    def _keys(self, tenant: str) -> list[str]:
        return [f"{self.prefix}{tenant}:bucket", f"{self.prefix}{tenant}:slots"]

    def _failures_key(self, address: str) -> str:
        return f"{self.prefix}auth-failures:{address}"

    async def enter(self, tenant: str) -> str:
        slot = uuid.uuid4().hex
        args: list[str | int] = [self.rpm, self.concurrency, int(time.time() * 1000), slot, self.slot_deadline_ms]
        async with redis_available():
            verdict = int(await self._enter(keys=self._keys(tenant), args=args))
        if verdict == -1:
            raise _refused_by_concurrency(self.concurrency)
        if verdict > 0:
            raise _refused_by_rate(verdict / 1000, self.rpm)
        return slot

    async def leave(self, tenant: str, slot: str) -> None:
        async with redis_available():
            await self.client.zrem(self._keys(tenant)[1], slot)

    async def check_address(self, address: str) -> None:
        key = self._failures_key(address)
        async with redis_available(), self.client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            count, ttl_ms = await pipe.execute()
        if int(count or 0) >= self.auth_failures:
            raise _refused_by_failures(self.auth_failures, max(ttl_ms, 0) / 1000)

    async def failed_auth(self, address: str) -> None:
        key = self._failures_key(address)
        async with redis_available(), self.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, AUTH_WINDOW_S, nx=True)  # the window starts at its first failure
            await pipe.execute()
