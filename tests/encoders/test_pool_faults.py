"""Faults in the encoder pool's decode workers, with real worker processes (issue 14): a worker
killed mid-decode, one past its deadline (in Python, or stuck where only a kill stops it) and one
over its memory cap each fail only their own file, with an error naming it; the pool reports
itself not ready while it replaces a worker, and serves the next files without a restart."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import encoders.pool as pool_module
from encoders.errors import DecoderLost, DecodersRebuilding, MediaTooCostly
from encoders.imagebind import ImageBindConfig, ImageBindModel, load_imagebind
from encoders.limits import MediaLimits
from encoders.media import MediaInput
from encoders.modalities import MODALITIES
from encoders.pool import Batching, EncoderPool
from tests.media import picture

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(demo_bundle: Path) -> ImageBindModel:
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    return load_imagebind(
        demo_bundle / manifest["imagebind"]["checkpoint"], ImageBindConfig(**manifest["imagebind"]["config"])
    )


@pytest.fixture(scope="module")
def slow() -> MediaInput:
    """~1.5 s to decode and resample on one core: long enough to be caught in the act."""
    buf = io.BytesIO()
    noise = np.random.default_rng(0).standard_normal((300 * 44_100, 2)).astype(np.float32) * 0.1
    sf.write(buf, noise, 44_100, format="WAV", subtype="PCM_16")
    return MediaInput("audio", buf.getvalue(), "audio[0]")


def image(seed: int) -> MediaInput:
    return MediaInput("image", picture(seed, (64, 48)), "image[0]")


async def busy_pid(pool: EncoderPool, field: str) -> int:
    for _ in range(600):
        if field in (busy := pool.busy_decode_workers()):
            return busy[field]
        await asyncio.sleep(0.01)
    raise AssertionError(f"{field} never reached a decode worker")


async def ready(pool: EncoderPool) -> None:
    """Wait for the replacement worker (it imports torch: seconds)."""
    deadline = time.monotonic() + 120
    while True:
        try:
            await pool.check_health()
            return
        except DecodersRebuilding:
            assert time.monotonic() < deadline, "the decode worker was not replaced"
            await asyncio.sleep(0.1)


def make_pool(model: ImageBindModel, **batching: float) -> EncoderPool:
    return EncoderPool(model, MediaLimits(), MODALITIES, batching=Batching(**batching))  # type: ignore[arg-type]


async def test_a_worker_killed_mid_decode_fails_only_its_file(model: ImageBindModel, slow: MediaInput) -> None:
    pool = make_pool(model, decode_workers=2)
    try:
        await pool.start()
        await pool.check_health()
        doomed = asyncio.ensure_future(pool.encode([slow]))
        pid = await busy_pid(pool, "audio[0]")
        others = asyncio.gather(*(pool.encode([image(i)]) for i in range(4)))  # on the other worker
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(DecoderLost, match=r"^audio\[0\]: the decode worker stopped") as info:
            await doomed
        assert info.value.field == "audio[0]"
        with pytest.raises(DecodersRebuilding, match="being replaced"):
            await pool.check_health()  # /readyz says so while the worker is replaced
        assert all(r[0].shape == (1024,) for r in await others)  # served meanwhile
        await ready(pool)
        assert pid not in pool.busy_decode_workers().values()
        [again] = await pool.encode([image(9)])  # and after: no restart needed
        assert again.shape == (1024,)
    finally:
        await pool.close()


async def test_a_worker_that_died_idle_fails_no_file(model: ImageBindModel) -> None:
    """Killed while it held no file (the OOM killer's choice): the next file goes to another worker."""
    pool = make_pool(model, decode_workers=2)
    try:
        await pool.start()
        for worker in list(pool._workers):
            os.kill(worker.pid, signal.SIGKILL)
        await asyncio.sleep(0.5)  # each executor sees its process gone
        results = await asyncio.wait_for(asyncio.gather(*(pool.encode([image(20 + i)]) for i in range(3))), 120)
        assert all(r[0].shape == (1024,) for r in results)  # on the replacements, not failed
    finally:
        await pool.close()


async def test_a_file_past_its_deadline_fails_alone_and_the_worker_goes_on(
    model: ImageBindModel, slow: MediaInput
) -> None:
    pool = make_pool(model, decode_workers=1, decode_deadline_s=0.3)
    try:
        await pool.start()
        pid = pool._workers[0].pid
        with pytest.raises(MediaTooCostly, match=r"^audio\[0\]: decoding took longer than the limit of 0.3 s"):
            await pool.encode([slow])
        await pool.check_health()  # the worker's own alarm stopped the decode: nothing to replace
        assert pool._workers[0].pid == pid
        assert (await pool.encode([image(1)]))[0].shape == (1024,)
    finally:
        await pool.close()


async def test_a_worker_stuck_past_its_deadline_is_killed_and_replaced(
    model: ImageBindModel, slow: MediaInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "DEADLINE_GRACE_S", 0.5)
    pool = make_pool(model, decode_workers=1, decode_deadline_s=0.5)
    try:
        await pool.start()
        stuck = asyncio.ensure_future(pool.encode([slow]))
        pid = await busy_pid(pool, "audio[0]")
        os.kill(pid, signal.SIGSTOP)  # as a decoder stuck in C: its alarm cannot run
        with pytest.raises(MediaTooCostly, match=r"^audio\[0\]: .* 0.5 s; the decoder was stopped"):
            await stuck
        with pytest.raises(DecodersRebuilding):
            await pool.check_health()
        await ready(pool)
        assert pool._workers[0].pid != pid
        assert (await pool.encode([image(2)]))[0].shape == (1024,)
    finally:
        await pool.close()


async def test_a_file_over_the_memory_cap_fails_alone(model: ImageBindModel) -> None:
    pool = make_pool(model, decode_workers=1, decode_memory_bytes=64 * 2**20)
    try:
        await pool.start()
        big = MediaInput("image", picture(3, (6000, 4000)), "image[1]")  # ~96 MB decoded, under every limit
        with pytest.raises(MediaTooCostly, match=r"^image\[1\]: decoding needs more memory"):
            await pool.encode([big])
        await pool.check_health()
        assert (await pool.encode([image(3)]))[0].shape == (1024,)
    finally:
        await pool.close()
