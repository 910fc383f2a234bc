"""The encoder pool's mechanisms, in-process with the demo bundle's ImageBind, real decoders and real
decode worker processes: batches form across concurrent requests, results equal the unbatched
forward, a corrupt file fails only its own request, full queues refuse at once, and a cached file
is neither decoded nor encoded again (also through the shared Redis tier)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as redis
import torch

from encoders.cache import EmbeddingCache
from encoders.errors import InvalidMedia, PoolFull
from encoders.imagebind import ImageBindConfig, ImageBindModel, load_imagebind
from encoders.limits import MediaLimits
from encoders.media import MediaInput
from encoders.modalities import MODALITIES
from encoders.pool import Batching, EncoderPool
from service.core.embedding_store import RedisEmbeddingStore
from tests.media import picture, valid

pytestmark = pytest.mark.integration


class Recorder:
    """Collects what the pool reports (the service passes its metrics here)."""

    def __init__(self) -> None:
        self.decodes: Counter[str] = Counter()
        self.batches: list[tuple[str, int]] = []
        self.waits: Counter[str] = Counter()
        self.lookups: Counter[tuple[str, bool]] = Counter()

    def decoded_files(self) -> int:
        return sum(self.decodes.values())

    def decoded(self, modality: str, seconds: float) -> None:
        self.decodes[modality] += 1

    def encoded(self, modality: str, seconds: float, batch_size: int) -> None:
        self.batches.append((modality, batch_size))

    def queued(self, stage: str, seconds: float) -> None:
        assert seconds >= 0
        self.waits[stage] += 1

    def cache_lookup(self, tier: str, hit: bool) -> None:
        self.lookups[(tier, hit)] += 1


@pytest.fixture(scope="module")
def model(demo_bundle: Path) -> ImageBindModel:
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    return load_imagebind(
        demo_bundle / manifest["imagebind"]["checkpoint"], ImageBindConfig(**manifest["imagebind"]["config"])
    )


def images(n: int) -> list[MediaInput]:
    return [MediaInput("image", picture(100 + i, (64 + i, 48)), f"image[{i}]") for i in range(n)]


async def test_concurrent_requests_share_a_batch_with_unbatched_results(model: ImageBindModel) -> None:
    recorder = Recorder()
    pool = EncoderPool(model, MediaLimits(), MODALITIES, batching=Batching(max_wait_ms=500), observer=recorder)
    try:
        items = images(6)
        batched = await asyncio.gather(*(pool.encode([item]) for item in items))  # six requests at once
        assert max(size for _, size in recorder.batches) > 1
        assert sum(size for _, size in recorder.batches) == 6
        assert recorder.waits["decode"] == 6 and recorder.waits["encode"] == 6
        for item, [embedding] in zip(items, batched, strict=True):
            alone = pool.predict("image", [MODALITIES["image"].load(item.data, item.field, MediaLimits())])[0]
            torch.testing.assert_close(embedding, alone, atol=1e-5, rtol=1e-5)
    finally:
        await pool.close()


async def test_batches_never_mix_modalities(model: ImageBindModel) -> None:
    recorder = Recorder()
    pool = EncoderPool(model, MediaLimits(), MODALITIES, batching=Batching(max_wait_ms=500), observer=recorder)
    try:
        items = [MediaInput(m, valid(m, i), f"{m}[0]") for i in range(2) for m in ("image", "depth", "imu")]
        await asyncio.gather(*(pool.encode([item]) for item in items))
        files: Counter[str] = Counter()
        for modality, size in recorder.batches:  # each batch is one modality's: the sizes add up per modality
            files[modality] += size
        assert files == {"image": 2, "depth": 2, "imu": 2}
        assert len(recorder.batches) <= 6
    finally:
        await pool.close()


async def test_a_corrupt_file_fails_only_its_own_request(model: ImageBindModel) -> None:
    recorder = Recorder()
    pool = EncoderPool(model, MediaLimits(), MODALITIES, batching=Batching(max_wait_ms=500), observer=recorder)
    try:
        good = images(4)
        corrupt = MediaInput("image", picture(7, (64, 64))[:120], "image[0]")
        results = await asyncio.gather(*(pool.encode([item]) for item in [*good, corrupt]), return_exceptions=True)
        assert isinstance(results[-1], InvalidMedia) and results[-1].field == "image[0]"  # pickled back intact
        assert all(isinstance(r, list) and r[0].shape == (1024,) for r in results[:-1])
        assert max(size for _, size in recorder.batches) > 1
    finally:
        await pool.close()


async def test_full_queues_refuse_at_once(model: ImageBindModel) -> None:
    pool = EncoderPool(model, MediaLimits(), MODALITIES, batching=Batching(max_decode_queue=3, max_encode_queue=3))
    try:
        slow = asyncio.ensure_future(pool.encode(images(3)))  # fills the decode queue
        await asyncio.sleep(0)
        with pytest.raises(PoolFull, match="at capacity"):
            await asyncio.wait_for(pool.encode(images(1)), timeout=1)
        assert len(await slow) == 3
        assert len(await pool.encode(images(1))) == 1  # room again
    finally:
        await pool.close()


async def test_one_tenant_holds_at_most_its_share_of_the_pool(model: ImageBindModel) -> None:
    batching = Batching(max_decode_queue=4, max_encode_queue=4, tenant_share=0.5)
    pool = EncoderPool(model, MediaLimits(), MODALITIES, batching=batching)
    mine = [replace(item, tenant="key_a") for item in images(2)]
    try:
        busy = asyncio.ensure_future(pool.encode(mine))  # key_a's whole share: 2 of 4 places
        await asyncio.sleep(0)
        with pytest.raises(PoolFull, match="this API key's share of the encoders is in use"):
            await asyncio.wait_for(pool.encode([replace(images(3)[2], tenant="key_a")]), timeout=1)
        others = [replace(item, tenant="key_b") for item in images(4)[2:]]
        assert len(await asyncio.wait_for(pool.encode(others), timeout=60)) == 2  # key_b still gets in
        assert len(await busy) == 2
        assert len(await pool.encode(mine)) == 2  # key_a's share is free again
        assert not pool._held_by  # nothing left counted
    finally:
        await pool.close()


async def test_a_cancelled_request_gives_its_places_back(model: ImageBindModel) -> None:
    pool = EncoderPool(model, MediaLimits(), MODALITIES, batching=Batching(max_decode_queue=3, max_encode_queue=3))
    try:
        request = asyncio.ensure_future(pool.encode(images(3)))
        await asyncio.sleep(0)  # it reserved its 3 places; its files have not started
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        assert len(await asyncio.wait_for(pool.encode(images(3)), timeout=60)) == 3  # all 3 places are free
    finally:
        await pool.close()


async def test_a_cached_file_is_neither_decoded_nor_encoded(model: ImageBindModel, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    shared = RedisEmbeddingStore(client, ttl_s=60)
    namespace = secrets.token_hex(8)  # this test's own entries
    first, second = Recorder(), Recorder()
    item = MediaInput("video", valid("video", 3), "video[0]")
    pools = [
        EncoderPool(model, MediaLimits(), MODALITIES, cache=EmbeddingCache(namespace, 2**20, shared, r), observer=r)
        for r in (first, second)
    ]
    try:
        [cold] = await pools[0].encode([item])
        assert first.decoded_files() == 1 and len(first.batches) == 1
        assert first.lookups == {("memory", False): 1, ("shared", False): 1}

        [warm] = await pools[0].encode([item])  # the same replica: its LRU
        assert first.decoded_files() == 1 and len(first.batches) == 1
        assert first.lookups[("memory", True)] == 1
        torch.testing.assert_close(warm, cold, atol=0, rtol=0)

        [other] = await pools[1].encode([item])  # another replica: Redis
        assert second.decoded_files() == 0 and second.batches == []
        assert second.lookups == {("memory", False): 1, ("shared", True): 1}
        torch.testing.assert_close(other, cold, atol=0, rtol=0)
    finally:
        for pool in pools:
            await pool.close()
        await client.aclose()


async def test_the_cache_is_kept_per_tenant(model: ImageBindModel) -> None:
    """A hit is faster than a miss: were entries shared, one tenant could learn what another uploaded."""
    seen = Recorder()
    cache = EmbeddingCache(secrets.token_hex(8), 2**20, None, seen)
    pool = EncoderPool(model, MediaLimits(), MODALITIES, cache=cache, observer=seen)
    item = images(1)[0]
    try:
        [a] = await pool.encode([replace(item, tenant="key_a")])
        [a_again] = await pool.encode([replace(item, tenant="key_a")])
        assert seen.decoded_files() == 1 and seen.lookups[("memory", True)] == 1
        [b] = await pool.encode([replace(item, tenant="key_b")])  # the same bytes, another tenant: a miss
        assert seen.decoded_files() == 2 and seen.lookups[("memory", True)] == 1
        torch.testing.assert_close(b, a, atol=0, rtol=0)
        torch.testing.assert_close(a_again, a, atol=0, rtol=0)
    finally:
        await pool.close()


def test_lru_keeps_within_its_byte_budget() -> None:
    class Quiet:
        def cache_lookup(self, tier: str, hit: bool) -> None:
            return None

    cache = EmbeddingCache("ns", max_bytes=3 * (4096 + 100), shared=None, observer=Quiet())

    async def fill() -> list[bool]:
        keys = [cache.key(None, "image", f"{i:064x}") for i in range(5)]
        for key in keys:
            await cache.put(key, bytes(4096))
        return [await cache.get(key) is not None for key in keys]

    assert asyncio.run(fill()) == [False, False, True, True, True]  # the oldest two were evicted
