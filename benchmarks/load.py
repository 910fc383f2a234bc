"""The load generator: conversations against a target, closed-loop or with Poisson arrivals.

A target is anything that runs one conversation and returns one `RequestRecord` per turn:
`HttpTarget` (POST /chat over real HTTP, SSE-streamed, through service.client) or the direct engine
(benchmarks.direct).
The runners only schedule, as vLLM's `bench serve` does:

- closed loop: `concurrency` users, each starting its next conversation as soon as its last one
  ends (turns of a conversation run in order: a second turn needs the first one's session);
- Poisson: new conversations arrive with exponential gaps at `rate` per second, however many are
  already in flight (open loop).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.metrics import RequestRecord
from benchmarks.workload import Conversation, Turn
from service.client import NO_RETRY, AsyncClient, Attachment, PandaServeError

ConversationRunner = Callable[[Conversation, float], Coroutine[Any, Any, list[RequestRecord]]]


@dataclass
class Run:
    records: list[RequestRecord]
    duration_s: float


async def closed_loop(
    run: ConversationRunner, conversations: list[Conversation], concurrency: int, seconds: float | None = None
) -> Run:
    """Each conversation once, or (with `seconds`) cycling through them until that much time has passed."""
    source: Iterable[Conversation] = itertools.cycle(conversations) if seconds else conversations
    pending = iter(source)  # shared by the users: each takes the next conversation
    records: list[RequestRecord] = []
    t0 = time.perf_counter()
    deadline = t0 + seconds if seconds else float("inf")

    async def user() -> None:
        for conversation in pending:
            if time.perf_counter() >= deadline:
                return
            records.extend(await run(conversation, t0))

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return Run(records, time.perf_counter() - t0)


async def poisson(run: ConversationRunner, conversations: list[Conversation], rate: float, seed: int = 0) -> Run:
    """Conversations arriving as a Poisson process of `rate` per second (exponential gaps, seeded)."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    tasks: list[asyncio.Task[list[RequestRecord]]] = []
    for i, conversation in enumerate(conversations):
        if i:
            await asyncio.sleep(rng.expovariate(rate))
        tasks.append(asyncio.create_task(run(conversation, t0)))
    done = await asyncio.gather(*tasks)
    return Run([r for records in done for r in records], time.perf_counter() - t0)


def service_client(url: str, headers: dict[str, str]) -> AsyncClient:
    """The client the benchmarks load the service with: no retries (a refusal is a measured failure,
    not a wait hidden in a request's latency), no connection cap, a timeout no turn reaches."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return AsyncClient(url, headers=headers, timeout=600, retry=NO_RETRY, limits=limits)


class HttpTarget:
    """POST /chat with stream=true, through the service's client (`service_client`): TTFT and
    inter-token gaps are timed on the delta events as the client hands them over, as they arrive."""

    def __init__(self, client: AsyncClient, temperature: float = 0.0) -> None:
        self.client = client
        self.temperature = temperature  # 0: greedy, as the original path and the direct engine

    async def conversation(self, conversation: Conversation, t0: float) -> list[RequestRecord]:
        records: list[RequestRecord] = []
        session_id: str | None = None
        for i, turn in enumerate(conversation.turns):
            record, session_id = await self.turn(conversation.kind, i, turn, session_id, t0)
            records.append(record)
            if not record.ok:
                break  # a later turn needs this one's session
        return records

    async def turn(
        self, kind: str, index: int, turn: Turn, session_id: str | None, t0: float
    ) -> tuple[RequestRecord, str | None]:
        files = [Attachment(f"{m.modality}{k}", m.data, m.modality) for k, m in enumerate(turn.media)]
        started = time.perf_counter()
        record = RequestRecord(kind=kind, turn=index, start=started - t0)
        last: float | None = None
        try:
            stream = await self.client.chat(
                turn.message,
                files,
                session=session_id,
                stream=True,
                max_tokens=turn.max_tokens,
                temperature=self.temperature,
            )
            async with stream:
                async for _ in stream:
                    now = time.perf_counter()
                    if last is None:
                        record.ttft = now - started
                    else:
                        record.itl.append(now - last)
                    last = now
                reply = await stream.reply()
        except PandaServeError as exc:
            if exc.status is not None:  # refused before the stream: the session is as it was
                record.error = f"HTTP {exc.status}: {exc.message}"
                return record, session_id
            if exc.type in ("connection_error", "timeout_error"):
                record.error = f"{exc.type}: {exc.message}"
                return record, session_id
            record.error = f"stream error: {exc.message}"  # an error event, or a stream cut short
            return record, None
        record.e2el = time.perf_counter() - started
        if last is None:  # no text before `done` (an immediate stop): first content is now
            record.ttft = record.e2el
        record.output_tokens = reply.usage.completion_tokens
        record.prompt_tokens = reply.usage.prompt_tokens
        record.ok = True
        return record, reply.session_id
