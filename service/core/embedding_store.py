"""The embedding cache's shared tier in Redis: every replica reads what any replica encoded."""

from __future__ import annotations

import redis.asyncio as redis


class RedisEmbeddingStore:
    def __init__(self, client: redis.Redis, ttl_s: int) -> None:
        self.client = client
        self.ttl_s = ttl_s

    async def get(self, key: str) -> bytes | None:
        value = await self.client.get(key)  # bytes: the client does not decode responses
        assert value is None or isinstance(value, bytes)
        return value

    async def set(self, key: str, value: bytes) -> None:
        await self.client.set(key, value, ex=self.ttl_s)
