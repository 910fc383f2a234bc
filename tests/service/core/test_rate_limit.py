"""One contract, two limiters (in memory, real Redis): requests in flight per tenant, failed
authentications per client address."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from service.core.rate_limit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from service.errors import TooManyRequests

pytestmark = pytest.mark.integration
FAILURES = 3


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest, redis_url: str) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter(rpm=600, concurrency=4, auth_failures=FAILURES)
        return
    async with redis.Redis.from_url(redis_url) as client:
        prefix = f"pandaserve:test:{uuid.uuid4().hex}:"
        yield RedisRateLimiter(client, rpm=600, concurrency=4, auth_failures=FAILURES, prefix=prefix)
        if keys := await client.keys(prefix + "*"):
            await client.delete(*keys)


async def test_each_request_holds_a_slot_of_its_own_until_it_leaves(limiter: RateLimiter) -> None:
    slots = [await limiter.enter("key_a") for _ in range(4)]
    assert len(set(slots)) == 4
    with pytest.raises(TooManyRequests, match="4 requests of this API key are already in flight"):
        await limiter.enter("key_a")
    await limiter.enter("key_b")  # another tenant's cap
    await limiter.leave("key_a", slots[0])
    await limiter.leave("key_a", slots[0])  # twice: still one slot given back, not two
    await limiter.enter("key_a")
    with pytest.raises(TooManyRequests):
        await limiter.enter("key_a")


async def test_a_slot_never_given_back_stops_counting_at_its_deadline(redis_url: str) -> None:
    """A replica that died (or lost Redis) as its requests ended: their slots free themselves."""
    async with redis.Redis.from_url(redis_url) as client:
        prefix = f"pandaserve:test:{uuid.uuid4().hex}:"
        leaky = RedisRateLimiter(client, rpm=600, concurrency=2, slot_deadline_s=0.2, prefix=prefix)
        await leaky.enter("key_a")
        await leaky.enter("key_a")  # neither is ever given back
        with pytest.raises(TooManyRequests):
            await leaky.enter("key_a")
        await asyncio.sleep(0.3)
        await leaky.enter("key_a")  # past their deadline: the cap is whole again
        await client.delete(*await client.keys(prefix + "*"))


async def test_an_address_is_refused_after_its_failed_authentications(limiter: RateLimiter) -> None:
    for _ in range(FAILURES):
        await limiter.check_address("10.0.0.1")
        await limiter.failed_auth("10.0.0.1")
    with pytest.raises(TooManyRequests) as refused:
        await limiter.check_address("10.0.0.1")
    assert 1 <= refused.value.retry_after_s <= 60
    await limiter.check_address("10.0.0.2")  # another address is not affected


async def test_the_window_ends(limiter: RateLimiter) -> None:
    for _ in range(FAILURES):
        await limiter.failed_auth("10.0.0.3")
    if isinstance(limiter, MemoryRateLimiter):
        count, start = limiter._failures["10.0.0.3"]
        limiter._failures["10.0.0.3"] = (count, start - 61)
    else:
        assert isinstance(limiter, RedisRateLimiter)
        await limiter.client.delete(limiter._failures_key("10.0.0.3"))  # what its expiry does
    await limiter.check_address("10.0.0.3")
