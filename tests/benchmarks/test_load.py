"""The load generator's parts that need no server: SSE parsing into records, scheduling, the workload."""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import parse_qs

import httpx
import pytest

from benchmarks.load import HttpTarget, closed_loop, poisson
from benchmarks.metrics import RequestRecord
from benchmarks.workload import Conversation, Media, Turn, Workload, single
from service.client import NO_RETRY, AsyncClient

pytestmark = pytest.mark.e2e


def sse(event: str, body: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(body)}\n\n"


def chat_server(seen: list[dict[str, str]]) -> httpx.MockTransport:
    """Answers /chat like the real one: three deltas, then done with usage (or 409 for a bad session)."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = request.read().decode(errors="replace")
        if request.headers["content-type"].startswith("multipart/"):  # a turn with files
            form = dict(re.findall(r'name="(\w+)"\r\n\r\n(.*?)\r\n', body))
        else:  # a turn without files: httpx sends a urlencoded form, which /chat accepts too
            form = {k: v[0] for k, v in parse_qs(body).items()}
        fields = {name: form.get(name, "") for name in ("message", "max_tokens", "session_id")}
        seen.append(fields)
        if fields["session_id"] == "gone":
            return httpx.Response(409, json={"error": {"type": "conflict", "message": "busy", "param": None}})
        events = [sse("delta", {"text": t}) for t in ("a", "b", "c")]
        usage = {"prompt_tokens": 21, "completion_tokens": 4}
        events.append(sse("done", {"session_id": "sess_1", "reply": "abc", "finish_reason": "length", "usage": usage}))
        return httpx.Response(200, text="".join(events), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handle)


def conversation(turns: int) -> Conversation:
    first = Turn("What is it?", (Media("image", b"\x89PNG fake"),), 8)
    return Conversation("image", (first,) + tuple(Turn("And then?", (), 8) for _ in range(turns - 1)))


async def test_sse_stream_becomes_a_record_and_the_session_carries_on() -> None:
    seen: list[dict[str, str]] = []
    async with AsyncClient("http://bench", transport=chat_server(seen), retry=NO_RETRY) as client:
        records = await HttpTarget(client).conversation(conversation(2), t0=0.0)
    assert [r.ok for r in records] == [True, True]
    first = records[0]
    assert (first.output_tokens, first.prompt_tokens, len(first.itl), first.error) == (4, 21, 2, None)
    assert 0 < first.ttft <= first.e2el
    assert [s["session_id"] for s in seen] == ["", "sess_1"]  # the second turn continues the first's session
    assert seen[0]["max_tokens"] == "8"


async def test_http_errors_and_error_events_are_failed_records() -> None:
    async def error_event(request: httpx.Request) -> httpx.Response:
        text = sse("delta", {"text": "a"}) + sse("error", {"error": {"type": "internal", "message": "engine died"}})
        return httpx.Response(200, text=text)

    async with AsyncClient("http://bench", transport=httpx.MockTransport(error_event), retry=NO_RETRY) as client:
        record, session = await HttpTarget(client).turn("image", 0, conversation(1).turns[0], None, 0.0)
    assert (record.ok, session) == (False, None)
    assert record.error is not None and "engine died" in record.error

    async with AsyncClient("http://bench", transport=chat_server([]), retry=NO_RETRY) as client:
        record, _ = await HttpTarget(client).turn("image", 1, conversation(2).turns[1], "gone", 0.0)
    assert not record.ok and record.error is not None and record.error.startswith("HTTP 409")


async def test_closed_loop_keeps_concurrency_and_runs_each_conversation_once() -> None:
    in_flight, peak, ran = 0, 0, []

    async def run(c: Conversation, t0: float) -> list[RequestRecord]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        ran.append(c)
        return [RequestRecord(c.kind, 0, 0.0, ok=True)]

    conversations = [conversation(1) for _ in range(10)]
    result = await closed_loop(run, conversations, concurrency=3)
    assert (peak, len(ran), len(result.records)) == (3, 10, 10)
    assert sorted(map(id, ran)) == sorted(map(id, conversations))

    result = await poisson(run, conversations, rate=10_000.0)
    assert len(result.records) == 10


def test_workload_is_deterministic_and_the_nonce_changes_only_bytes() -> None:
    workload = Workload.load()
    a, b, other = (workload.conversation(3, nonce) for nonce in (1, 1, 2))
    assert a == b
    shape = lambda c: (c.kind, c.modalities, [(t.message, t.max_tokens) for t in c.turns])  # noqa: E731
    assert shape(a) == shape(other)
    assert all(x.data != y.data for x, y in zip(a.turns[0].media, other.turns[0].media, strict=True))
    videos = single("video", 2, nonce=5, max_tokens=16)
    assert videos[0].turns[0].media[0].data != videos[1].turns[0].media[0].data
