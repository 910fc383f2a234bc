"""The encoder pool: bytes of any modality -> ImageBind embedding, in LitServe's shape (the in-process
`encoders.media.Encoder`).

decode (a process pool, off the event loop and the GIL) -> batch (per modality, across concurrent
requests) -> predict (one forward on the device) -> unbatch. A file whose embedding is cached skips
all of it. Both queues are bounded: when full, `encode` refuses at once (`PoolFull`) instead of
letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np
import torch

from encoders.cache import EmbeddingCache
from encoders.errors import PoolFull, UnsupportedMediaType
from encoders.imagebind import ImageBindModel
from encoders.limits import MediaLimits
from encoders.media import MediaInput
from encoders.modalities import MODALITIES


class PoolObserver(Protocol):
    """Where the pool reports (the service's metrics)."""

    def decoded(self, modality: str, seconds: float) -> None: ...

    def encoded(self, modality: str, seconds: float, batch_size: int) -> None: ...

    def queued(self, stage: str, seconds: float) -> None: ...

    def cache_lookup(self, tier: str, hit: bool) -> None: ...


class Unobserved:
    def decoded(self, modality: str, seconds: float) -> None:
        return None

    def encoded(self, modality: str, seconds: float, batch_size: int) -> None:
        return None

    def queued(self, stage: str, seconds: float) -> None:
        return None

    def cache_lookup(self, tier: str, hit: bool) -> None:
        return None


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0  # how long the first file of a batch waits for others to join
    decode_workers: int = 2
    max_decode_queue: int = 256  # files being decoded or waiting to be
    max_encode_queue: int = 256  # decoded files waiting for (or in) a forward


@dataclass
class _Waiting:
    array: np.ndarray
    future: asyncio.Future[torch.Tensor]
    since: float = field(default_factory=time.monotonic)


def _decode(modality: str, data: bytes, field: str, limits: MediaLimits) -> tuple[np.ndarray, float, float]:
    """Runs in a decode worker process: (array, when it started, seconds it took); monotonic clocks
    are system-wide on Linux, so the parent can tell how long the file queued."""
    started = time.monotonic()
    array = MODALITIES[modality].load(data, field, limits)
    return array, started, time.monotonic() - started


def _init_decode_worker() -> None:
    torch.set_num_threads(1)  # one file per worker process; the workers, not torch, use the cores


class EncoderPool:
    def __init__(
        self,
        model: ImageBindModel,
        limits: MediaLimits,
        modalities: Iterable[str],
        *,
        batching: Batching | None = None,
        cache: EmbeddingCache | None = None,
        device: str = "cpu",
        observer: PoolObserver | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self.modalities = [m for m in MODALITIES if m in set(modalities)]
        self.batching = batching or Batching()
        self.cache = cache
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self.observer = observer or Unobserved()
        # spawn, not fork: the parent holds threads (torch, the event loop, vLLM's client).
        self._decoders = ProcessPoolExecutor(
            self.batching.decode_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_decode_worker,
        )
        self._queues: dict[str, deque[_Waiting]] = {m: deque() for m in self.modalities}
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._decoding = 0
        self._encoding = 0

    async def start(self) -> None:
        """Start the decode workers now: each imports torch and the decoders (seconds), which should
        not be the first request's time."""
        loop = asyncio.get_running_loop()
        workers = self.batching.decode_workers
        await asyncio.gather(*(loop.run_in_executor(self._decoders, _init_decode_worker) for _ in range(workers)))

    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        """Embeddings (out_dim,) in the order of `items`; the first bad file (in order) raises its MediaError."""
        for item in items:
            if item.modality not in self.modalities:
                raise UnsupportedMediaType(item.field, f"this model does not serve {item.modality}")
        b = self.batching
        if self._decoding + len(items) > b.max_decode_queue or self._encoding + len(items) > b.max_encode_queue:
            raise PoolFull(
                f"the encoders are at capacity ({self._decoding} files decoding, {self._encoding} encoding); "
                "retry shortly"
            )
        # Places in the decode queue are reserved now, before any await, so the bound holds under
        # concurrency. Each file gives its place back once decoded (or found cached); whatever is left
        # goes back when the request ends however it ends (a cancelled file may never have started).
        self._decoding += len(items)
        held = [True] * len(items)

        def release(i: int) -> None:
            if held[i]:
                held[i] = False
                self._decoding -= 1

        try:
            results = await asyncio.gather(
                *(self._embed(item, partial(release, i)) for i, item in enumerate(items)), return_exceptions=True
            )
        finally:
            for i in range(len(items)):
                release(i)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]  # no exceptions left

    async def _embed(self, item: MediaInput, release: Callable[[], None]) -> torch.Tensor:
        key = self.cache.key(item.modality, item.sha256) if self.cache else ""
        try:
            if self.cache and (hit := await self.cache.get(key)) is not None:
                return hit
            submitted = time.monotonic()
            array, started, seconds = await asyncio.get_running_loop().run_in_executor(
                self._decoders, _decode, item.modality, item.data, item.field, self.limits
            )
            self.observer.queued("decode", started - submitted)
            self.observer.decoded(item.modality, seconds)
        finally:
            release()  # this file's place in the decode queue
        embedding = await self._forward_in_batch(item.modality, array)
        if self.cache:
            await self.cache.put(key, embedding)
        return embedding

    async def _forward_in_batch(self, modality: str, array: np.ndarray) -> torch.Tensor:
        waiting = _Waiting(array, asyncio.get_running_loop().create_future())
        self._encoding += 1
        try:
            self._queues[modality].append(waiting)
            self._arrived.set()
            if self._worker is None or self._worker.done():
                self._worker = asyncio.create_task(self._device_worker())
            return await waiting.future
        finally:
            self._encoding -= 1

    async def _device_worker(self) -> None:
        """The one worker of this model copy: the modality whose oldest file waited longest goes next;
        its batch fills up to max_batch_size for at most max_wait_ms after that file arrived."""
        max_size, max_wait = self.batching.max_batch_size, self.batching.max_wait_ms / 1000
        while True:
            while not any(self._queues.values()):
                self._arrived.clear()
                await self._arrived.wait()
            modality = min((q[0].since, m) for m, q in self._queues.items() if q)[1]
            queue = self._queues[modality]
            deadline = queue[0].since + max_wait
            while len(queue) < max_size and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
            batch = [queue.popleft() for _ in range(min(max_size, len(queue)))]
            batch = [w for w in batch if not w.future.done()]  # skip files whose request went away
            if batch:
                await self._forward(modality, batch)

    async def _forward(self, modality: str, batch: list[_Waiting]) -> None:
        started = time.monotonic()
        for w in batch:
            self.observer.queued("encode", started - w.since)
        try:
            out = await asyncio.to_thread(self.predict, modality, np.stack([w.array for w in batch]))
        except Exception as exc:
            if len(batch) > 1:  # find the file that fails; only its request fails
                for w in batch:
                    await self._forward(modality, [w])
                return
            _settle(batch[0].future, exc)
            return
        self.observer.encoded(modality, time.monotonic() - started, len(batch))
        for w, row in zip(batch, out, strict=True):
            _settle(w.future, row.clone())  # a copy: a view would keep the whole batch alive

    @torch.inference_mode()
    def predict(self, modality: str, batch: np.ndarray) -> torch.Tensor:
        branch = MODALITIES[modality].branch
        x = torch.from_numpy(batch).to(self.device, self.dtype)
        return self.model({branch: x})[branch].float().cpu()

    async def check_health(self) -> None:
        return None

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._decoders.shutdown(cancel_futures=True)


def _settle(future: asyncio.Future[torch.Tensor], result: torch.Tensor | Exception) -> None:
    if future.done():  # cancelled: its request went away
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
