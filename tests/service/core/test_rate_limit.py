"""One contract, two limiters (in memory, real Redis): failed authentications per client address."""

from __future__ import annotations

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
