"""The encoder pool alone, in this process: N images one `encode` call after another, then N
concurrent calls (one image each, as N concurrent requests make them). The ratio of the two
images/s is what cross-request batching (or any concurrency in the pool) buys."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benchmarks import media
from benchmarks.parts import Parts
from encoders.media import MediaInput
from encoders.pool import EncoderPool


def images(count: int, nonce: int) -> list[MediaInput]:
    return [MediaInput("image", media.make("image", i, nonce), f"image[{i}]") for i in range(count)]


async def encoder_bench(parts: Parts, count: int, nonces: list[int]) -> dict[str, Any]:
    """`nonces`: three new ones, so each phase's bytes are new (a pool that caches gets nothing for free)."""
    pool = EncoderPool(parts.imagebind, parts.limits, parts.bundle.manifest.modalities)
    warm, sequential, concurrent = (images(n, nonce) for n, nonce in zip((4, count, count), nonces, strict=True))
    try:
        await asyncio.gather(*(pool.encode([item]) for item in warm))  # untimed: first-call costs (workers start)

        started = time.perf_counter()
        for item in sequential:
            await pool.encode([item])
        sequential_s = time.perf_counter() - started

        started = time.perf_counter()
        await asyncio.gather(*(pool.encode([item]) for item in concurrent))
        concurrent_s = time.perf_counter() - started
    finally:
        await pool.close()
    return {
        "images": count,
        "sequential_s": sequential_s,
        "concurrent_s": concurrent_s,
        "sequential_images_per_s": count / sequential_s,
        "concurrent_images_per_s": count / concurrent_s,
    }
