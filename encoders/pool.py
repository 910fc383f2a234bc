"""The encoder pool: bytes of any modality -> what a model makes of it, in LitServe's shape.

decode (a process pool, off the event loop and the GIL) -> batch (per modality, across concurrent
requests) -> predict (one forward on the device) -> unbatch. A file whose result is cached skips
all of it. `MediaPool` is that machinery; a model says how to decode a file (`loader`, run in the
workers) and how to predict a batch: `EncoderPool` gives ImageBind embeddings (PandaGPT's encoder),
encoders/videollama/pool.py Video-LLaMA's soft prompts.

Both queues are bounded: when full, `encode` refuses at once (`PoolFull`) instead of letting
latency grow without bound; and no tenant may hold more than its share of the decode
queue's places, so one API key cannot fill the pool for every other.

Each decode worker is a process in an executor of its own, running one file at a time under a
wall-clock deadline (an alarm in the worker, and past a grace the parent kills it) and a memory cap
(RLIMIT_AS). A worker that dies or overruns fails only the file it held, and is replaced in the
background; until it is back `check_health` raises `DecodersRebuilding` (/readyz is 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import torch

from encoders.cache import EmbeddingCache
from encoders.errors import DecoderLost, DecodersRebuilding, MediaTooCostly, PoolFull, UnsupportedMediaType
from encoders.imagebind import ImageBindModel
from encoders.limits import MediaLimits
from encoders.media import MediaInput
from encoders.modalities import MODALITIES

log = logging.getLogger(__name__)

Out = TypeVar("Out")
# One file's bytes -> the model's input (a module-level function: it is pickled to the workers).
Loader = Callable[[bytes, str, MediaLimits], Any]

# Past its deadline a worker's own alarm stops the decode at the next Python instruction; one stuck
# in a long C call (a codec, a resize) is killed by the parent this much later.
DEADLINE_GRACE_S = 5.0


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
    decode_deadline_s: float = 60.0  # wall clock for one file in a decode worker; 0: none
    # A decode worker's address space beyond what it holds once started (its libraries mapped); 0: no cap.
    decode_memory_bytes: int = 4 * 2**30
    # The most of max_decode_queue's places one tenant's files may hold (files without a tenant: no cap).
    tenant_share: float = 1.0

    @property
    def tenant_places(self) -> int:
        return max(1, int(self.max_decode_queue * self.tenant_share))


@dataclass
class _Waiting:
    decoded: Any  # the loader's result
    future: asyncio.Future[Any]
    since: float = field(default_factory=time.monotonic)


class _DiedIdle(Exception):
    """The worker a file was handed to had died while idle; another worker takes the file."""


class _DeadlinePassed(BaseException):
    """Raised in a decode worker by its alarm: a BaseException, so no decoder's `except` keeps it."""


class _Alarm:
    rang = False  # during this decode; a decode worker runs one at a time
    repeat_s = 0.05


def _on_alarm(signum: int, frame: object) -> None:
    # An exception raised inside a C library's callback into Python (soundfile's reads through cffi)
    # is printed and dropped, and the library goes on with what the callback returned: so the alarm
    # rings again until one lands in our code, and a decode it rang in never counts as done.
    _Alarm.rang = True
    signal.setitimer(signal.ITIMER_REAL, _Alarm.repeat_s)
    raise _DeadlinePassed


def _decode(
    load: Loader, data: bytes, field: str, limits: MediaLimits, deadline_s: float = 0.0
) -> tuple[Any, float, float]:
    """Runs in a decode worker process: (array, when it started, seconds it took); monotonic clocks
    are system-wide on Linux, so the parent can tell how long the file queued."""
    started = time.monotonic()
    _Alarm.rang = False
    try:
        if deadline_s:
            signal.setitimer(signal.ITIMER_REAL, deadline_s)
        try:
            decoded = load(data, field, limits)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        if _Alarm.rang:  # it rang where it was dropped: the result may rest on a cut-short read
            raise _DeadlinePassed
    except _DeadlinePassed:
        raise MediaTooCostly(field, f"decoding took longer than the limit of {deadline_s:g} s; stopped") from None
    except MemoryError:
        raise MediaTooCostly(field, "decoding needs more memory than a decode worker may use") from None
    return decoded, started, time.monotonic() - started


def _address_space() -> int | None:
    """This process's virtual size in bytes (Linux); None where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def _init_decode_worker(memory_bytes: int = 0) -> None:
    torch.set_num_threads(1)  # one file per worker process; the workers, not torch, use the cores
    signal.signal(signal.SIGALRM, _on_alarm)
    base = _address_space() if memory_bytes else None
    if base is not None:
        # On top of what the worker maps once its imports are done (torch, PyAV: it varies by
        # platform). Over it an allocation fails: MemoryError, the file's own 413, not the machine's OOM.
        resource.setrlimit(resource.RLIMIT_AS, (base + memory_bytes, base + memory_bytes))


@dataclass
class _Worker:
    """One decode worker process in an executor of its own, so its death fails only its own file."""

    executor: ProcessPoolExecutor
    pid: int
    field: str | None = None  # the file it decodes now


class MediaPool(Generic[Out]):
    """The pool's machinery; a model subclasses it with `loader`, `predict` and the cache's codec."""

    def __init__(
        self,
        limits: MediaLimits,
        modalities: Sequence[str],
        *,
        batching: Batching | None = None,
        cache: EmbeddingCache | None = None,
        observer: PoolObserver | None = None,
    ) -> None:
        self.limits = limits
        self.modalities = list(modalities)
        self.batching = batching or Batching()
        self.cache = cache
        self.observer = observer or Unobserved()
        self._workers: list[_Worker] = []
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._spawning: set[asyncio.Task[None]] = set()  # workers starting or being replaced
        self._started = False
        self._closed = False
        self._queues: dict[str, deque[_Waiting]] = {m: deque() for m in self.modalities}
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._decoding = 0
        self._encoding = 0
        self._held_by: Counter[str] = Counter()  # tenant -> its files in the pool, decoding or encoding

    async def start(self) -> None:
        """Start the decode workers now: each imports torch and the decoders (seconds), which should
        not be the first request's time. Without it they start with the first file."""
        self._start_workers()
        await asyncio.gather(*list(self._spawning))

    def _start_workers(self) -> None:
        if not self._started:
            self._started = True
            for _ in range(self.batching.decode_workers):
                self._spawn()

    def _spawn(self) -> None:
        task = asyncio.get_running_loop().create_task(self._start_worker())
        self._spawning.add(task)
        task.add_done_callback(self._spawning.discard)

    async def _start_worker(self) -> None:
        """A new worker, put in the idle queue once it answers; retried while it cannot start."""
        while not self._closed:
            # spawn, not fork: the parent holds threads (torch, the event loop, vLLM's client).
            executor = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_decode_worker,
                initargs=(self.batching.decode_memory_bytes,),
            )
            try:
                pid = await asyncio.wrap_future(executor.submit(os.getpid))
            except asyncio.CancelledError:  # the pool closes
                executor.shutdown(wait=False, cancel_futures=True)
                raise
            except Exception:
                log.exception("a decode worker failed to start; retrying")
                executor.shutdown(wait=False, cancel_futures=True)
                await asyncio.sleep(1)
                continue
            worker = _Worker(executor, pid)
            self._workers.append(worker)
            self._idle.put_nowait(worker)
            return

    def _replace(self, worker: _Worker, kill: bool = False) -> None:
        """Retire a dead or (`kill`: killed first) overrunning worker and start another in the background."""
        if kill:  # alive: its executor has not seen it die, so the pid is still its process's
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
        worker.executor.shutdown(wait=False, cancel_futures=True)
        self._workers.remove(worker)
        if not self._closed:
            self._spawn()

    def busy_decode_workers(self) -> dict[str, int]:
        """The field each busy decode worker decodes -> its process id (operators, tests)."""
        return {w.field: w.pid for w in self._workers if w.field is not None}

    def loader(self, modality: str) -> Loader:
        """How a decode worker turns a file of `modality` into the model's input."""
        raise NotImplementedError

    def predict(self, modality: str, batch: list[Any]) -> list[Out]:
        """One forward of decoded files of one modality: one result per file, each its own copy."""
        raise NotImplementedError

    def to_bytes(self, result: Out) -> bytes:
        """A result as the embedding cache keeps it."""
        raise NotImplementedError

    def from_bytes(self, value: bytes) -> Out:
        raise NotImplementedError

    async def encode(self, items: list[MediaInput]) -> list[Out]:
        """Results in the order of `items`; the first bad file (in order) raises its MediaError."""
        for item in items:
            if item.modality not in self.modalities:
                raise UnsupportedMediaType(item.field, f"this model does not serve {item.modality}")
        b = self.batching
        if self._decoding + len(items) > b.max_decode_queue or self._encoding + len(items) > b.max_encode_queue:
            raise PoolFull(
                f"the encoders are at capacity ({self._decoding} files decoding, {self._encoding} encoding); "
                "retry shortly"
            )
        tenants = Counter(item.tenant for item in items if item.tenant is not None)
        for tenant, count in tenants.items():
            if self._held_by[tenant] + count > b.tenant_places:
                raise PoolFull(
                    f"this API key's share of the encoders is in use ({self._held_by[tenant]} of its "
                    f"{b.tenant_places} files in progress); retry shortly"
                )
        # Places in the decode queue are reserved now, before any await, so the bound holds under
        # concurrency. Each file gives its place back once decoded (or found cached); whatever is left
        # goes back when the request ends however it ends (a cancelled file may never have started).
        # A tenant's share is held until its files are embedded.
        self._decoding += len(items)
        self._held_by.update(tenants)
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
            self._held_by.subtract(tenants)
            self._held_by = +self._held_by  # forget tenants with nothing in progress
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return results  # type: ignore[return-value]  # no exceptions left

    async def _embed(self, item: MediaInput, release: Callable[[], None]) -> Out:
        key = self.cache.key(item.tenant, item.modality, item.sha256) if self.cache else ""
        try:
            if self.cache and (hit := await self.cache.get(key)) is not None:
                return self.from_bytes(hit)
            submitted = time.monotonic()
            decoded, started, seconds = await self._decode_in_worker(item)
            self.observer.queued("decode", started - submitted)
            self.observer.decoded(item.modality, seconds)
        finally:
            release()  # this file's place in the decode queue
        result = await self._forward_in_batch(item.modality, decoded)
        if self.cache:
            await self.cache.put(key, self.to_bytes(result))
        return result

    async def _decode_in_worker(self, item: MediaInput) -> tuple[Any, float, float]:
        self._start_workers()
        while True:
            worker = await self._idle.get()
            # The job owns the worker until the decode ends however it ends: a request that goes away
            # does not cut the deadline short or hand back a worker that is still busy.
            job = asyncio.ensure_future(self._run(worker, item))
            job.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved, if no one awaits
            try:
                return await asyncio.shield(job)
            except _DiedIdle:
                continue  # that worker is being replaced; the next idle one takes the file

    async def _run(self, worker: _Worker, item: MediaInput) -> tuple[Any, float, float]:
        deadline = self.batching.decode_deadline_s
        worker.field = item.field
        try:
            try:
                load = self.loader(item.modality)
                future = worker.executor.submit(_decode, load, item.data, item.field, self.limits, deadline)
            except BrokenProcessPool:  # it died while idle (killed from outside): not this file's doing
                self._replace(worker)
                raise _DiedIdle from None
            return await asyncio.wait_for(
                asyncio.wrap_future(future), deadline + DEADLINE_GRACE_S if deadline else None
            )
        except TimeoutError:
            self._replace(worker, kill=True)  # stuck past its own alarm, in C code
            raise MediaTooCostly(
                item.field, f"decoding took longer than the limit of {deadline:g} s; the decoder was stopped"
            ) from None
        except _DeadlinePassed:  # the alarm rang as the decode returned: the worker is fine
            raise MediaTooCostly(item.field, f"decoding took longer than the limit of {deadline:g} s") from None
        except BrokenProcessPool:
            self._replace(worker)
            raise DecoderLost(item.field, "the decode worker stopped while decoding this file; retry") from None
        finally:
            worker.field = None
            if worker in self._workers:
                self._idle.put_nowait(worker)

    async def _forward_in_batch(self, modality: str, decoded: Any) -> Out:
        waiting = _Waiting(decoded, asyncio.get_running_loop().create_future())
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
            out = await asyncio.to_thread(self.predict, modality, [w.decoded for w in batch])
        except Exception as exc:
            if len(batch) > 1:  # find the file that fails; only its request fails
                for w in batch:
                    await self._forward(modality, [w])
                return
            _settle(batch[0].future, exc)
            return
        self.observer.encoded(modality, time.monotonic() - started, len(batch))
        for w, result in zip(batch, out, strict=True):
            _settle(w.future, result)

    async def check_health(self) -> None:
        if self._closed:
            raise DecodersRebuilding("the encoder pool is closed")
        if self._started and self._spawning:
            raise DecodersRebuilding(f"{len(self._spawning)} decode worker(s) starting or being replaced")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._closed = True
        for task in list(self._spawning):
            task.cancel()
        for worker in list(self._workers):
            worker.executor.shutdown(cancel_futures=True)


class EncoderPool(MediaPool[torch.Tensor]):
    """ImageBind: any of the six modalities -> its embedding (out_dim,), PandaGPT's encoder."""

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
        wanted = set(modalities)
        super().__init__(
            limits, [m for m in MODALITIES if m in wanted], batching=batching, cache=cache, observer=observer
        )
        self.model = model
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype

    def loader(self, modality: str) -> Loader:
        return MODALITIES[modality].load

    @torch.inference_mode()
    def predict(self, modality: str, batch: list[Any]) -> list[torch.Tensor]:
        branch = MODALITIES[modality].branch
        x = torch.from_numpy(np.stack(batch)).to(self.device, self.dtype)
        out = self.model({branch: x})[branch].float().cpu()
        return [row.clone() for row in out]  # copies: a view would keep the whole batch alive

    def to_bytes(self, result: torch.Tensor) -> bytes:
        return result.to(torch.float32).numpy().tobytes()

    def from_bytes(self, value: bytes) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(value, dtype=np.float32).copy())


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():  # cancelled: its request went away
        return
    if isinstance(result, Exception):
        future.set_exception(result)
    else:
        future.set_result(result)
