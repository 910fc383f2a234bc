"""The load generator: conversations against a target, closed-loop or with Poisson arrivals.

A target is anything that runs one conversation and returns one `RequestRecord` per turn:
`HttpTarget` (POST /chat over real HTTP, SSE-streamed) or the direct engine (benchmarks.direct).
The runners only schedule, as vLLM's `bench serve` does:

- closed loop: `concurrency` users, each starting its next conversation as soon as its last one
  ends (turns of a conversation run in order: a second turn needs the first one's session);
- Poisson: new conversations arrive with exponential gaps at `rate` per second, however many are
  already in flight (open loop).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from benchmarks.metrics import RequestRecord
from benchmarks.workload import Conversation, Turn

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


class HttpTarget:
    """POST /chat with stream=true: TTFT and inter-token gaps are timed on the SSE events as they arrive."""

    def __init__(self, client: httpx.AsyncClient, temperature: float = 0.0) -> None:
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
        form = {"message": turn.message, "max_tokens": str(turn.max_tokens), "stream": "true"}
        form["temperature"] = str(self.temperature)
        if session_id:
            form["session_id"] = session_id
        files = [(m.modality, (f"{m.modality}{k}", m.data)) for k, m in enumerate(turn.media)]
        started = time.perf_counter()
        record = RequestRecord(kind=kind, turn=index, start=started - t0)
        try:
            async with self.client.stream("POST", "/chat", data=form, files=files) as response:
                if response.status_code != 200:
                    body = (await response.aread()).decode(errors="replace")
                    record.error = f"HTTP {response.status_code}: {body[:300]}"
                    return record, session_id
                session_id = await self._read_events(response, record, started)
        except httpx.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        return record, session_id

    @staticmethod
    async def _read_events(response: httpx.Response, record: RequestRecord, started: float) -> str | None:
        """Consume the SSE stream into `record`; the session id from the `done` event."""
        last: float | None = None
        event, data = "message", ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data += line.removeprefix("data:").strip()
            elif line == "" and data:  # a blank line ends an event
                now = time.perf_counter()
                body = json.loads(data)
                if event == "delta":
                    if last is None:
                        record.ttft = now - started
                    else:
                        record.itl.append(now - last)
                    last = now
                elif event == "done":
                    record.e2el = now - started
                    if last is None:  # no text before `done` (an immediate stop): first content is now
                        record.ttft = record.e2el
                    record.output_tokens = body["usage"]["completion_tokens"]
                    record.prompt_tokens = body["usage"]["prompt_tokens"]
                    record.ok = True
                    return str(body["session_id"])
                elif event == "error":
                    record.error = f"stream error: {body.get('error', body)}"
                    return None
                event, data = "message", ""
        record.error = "the stream ended without a done event"
        return None
