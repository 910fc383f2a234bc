"""The client against the real server (the demo bundle, sessions in Redis): the same greedy reply
streamed or not, sync or async; sessions; a bad file's error naming its field; embeddings; and its
retries meeting the server's real per-key limit."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from service.client import NO_RETRY, AsyncClient, Client, PandaServeError, Retry
from service.settings import Settings
from tests.conftest import API_KEY, OTHER_KEY
from tests.media import picture, wav

pytestmark = pytest.mark.e2e

QUESTION = "What is in this image?"
GREEDY = {"temperature": 0.0, "max_tokens": 12}


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[Client]:
    with Client(server, API_KEY) as c:
        yield c


def image() -> tuple[str, bytes]:
    return ("shapes.png", picture(5, (128, 96)))


def test_streamed_and_unstreamed_greedy_replies_are_equal_and_a_second_turn_continues(client: Client) -> None:
    plain = client.chat(QUESTION, [image()], **GREEDY)
    with client.chat(QUESTION, [image()], stream=True, **GREEDY) as stream:
        text = "".join(delta.text for delta in stream)
    streamed = stream.reply
    assert plain.reply and text == streamed.reply == plain.reply
    assert (streamed.usage, streamed.finish_reason) == (plain.usage, plain.finish_reason)
    assert streamed.session_id != plain.session_id  # each first turn starts its own session

    second = client.chat("And the colour?", session=plain.session_id, **GREEDY)
    assert second.session_id == plain.session_id
    assert second.usage.prompt_tokens > plain.usage.prompt_tokens + plain.usage.completion_tokens  # it holds turn 1
    session = client.get_session(plain.session_id)
    assert [(t.message, t.reply) for t in session.turns] == [(QUESTION, plain.reply), ("And the colour?", second.reply)]
    assert [m.modality for m in session.turns[0].media] == ["image"] and session.turns[1].media == []


async def test_the_async_client_gets_the_same_reply(server: str, client: Client) -> None:
    plain = client.chat(QUESTION, [image()], **GREEDY)
    async with AsyncClient(server, API_KEY) as c:
        stream = await c.chat(QUESTION, [image()], stream=True, return_token_ids=True, **GREEDY)
        deltas = [d async for d in stream]
        reply = await stream.reply()
        assert reply.reply == "".join(d.text for d in deltas) == plain.reply
        assert reply.token_ids is not None and len(reply.token_ids) == reply.usage.completion_tokens
        assert (await c.chat("And the colour?", session=reply.session_id, **GREEDY)).session_id == reply.session_id


def test_a_corrupt_file_raises_the_error_naming_its_field(client: Client) -> None:
    corrupt = ("broken.png", picture(1, (300, 300))[:300])
    with pytest.raises(PandaServeError) as caught:
        client.chat(QUESTION, [corrupt], stream=True)  # refused before any event: raised at the call
    error = caught.value
    assert (error.status, error.param) == (422, "image") and "corrupt" in error.message, error
    assert error.message.startswith("image")  # the server names the upload: image[0]

    with pytest.raises(PandaServeError) as caught:
        client.chat("And then?", session="sess_" + "0" * 32)
    assert (caught.value.status, caught.value.type, caught.value.param) == (404, "not_found_error", "session_id")


def test_embed_returns_a_vector_per_file(client: Client) -> None:
    files = [("tone.wav", wav(2, 1.0)), image()]
    result = client.embed(files)
    assert result.dimensions == 1024
    assert [(e.field, e.modality) for e in result.data] == [("image[0]", "image"), ("audio[0]", "audio")]
    assert all(len(e.embedding) == 1024 for e in result.data)
    assert result.data[0].sha256 == hashlib.sha256(image()[1]).hexdigest()


def test_sessions_are_created_read_and_deleted(client: Client, server: str) -> None:
    session = client.create_session({"user": "u1"})
    assert (session.metadata, session.turns) == ({"user": "u1"}, [])
    assert client.get_session(session.session_id).session_id == session.session_id
    client.delete_session(session.session_id)
    with pytest.raises(PandaServeError) as caught:
        client.get_session(session.session_id)
    assert caught.value.status == 404
    assert len(client.models()) == 1

    with Client(server, "not-a-key") as stranger, pytest.raises(PandaServeError) as caught:
        stranger.models()
    assert (caught.value.status, caught.value.type) == (401, "authentication_error")


class Recording(httpx.AsyncBaseTransport):
    """The real transport, noting each response's status: what the client's retries met."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.statuses: list[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        self.statuses.append(response.status_code)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_retries_wait_out_the_servers_in_flight_limit(server: str) -> None:
    """The key's in-flight cap (PANDASERVE_RATE_LIMIT_CONCURRENCY) is filled with requests whose bodies
    are held back (the server admits a request before it reads its body); a call then meets 429 with
    Retry-After, waits, and succeeds once they finish."""
    cap = Settings().rate_limit_concurrency
    release = asyncio.Event()

    async def held_back() -> AsyncIterator[bytes]:
        yield b'{"metadata": '
        await release.wait()
        yield b"{}}"

    headers = {"Authorization": f"Bearer {OTHER_KEY}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=server, headers=headers, timeout=60) as raw:
        holders = [asyncio.create_task(raw.post("/sessions", content=held_back())) for _ in range(cap)]
        try:
            async with AsyncClient(server, OTHER_KEY, retry=NO_RETRY) as probe:
                deadline = time.monotonic() + 30
                while True:  # until every slot is held: then the probe itself is refused
                    try:
                        await probe.models()
                    except PandaServeError as refused:
                        assert (refused.status, refused.type, refused.retry_after_s) == (429, "rate_limit_error", 1)
                        assert "in flight" in refused.message
                        break
                    assert time.monotonic() < deadline, "the held-back requests never filled the cap"
                    await asyncio.sleep(0.05)

            recording = Recording()
            asyncio.get_running_loop().call_later(1.5, release.set)
            started = time.monotonic()
            async with AsyncClient(server, OTHER_KEY, retry=Retry(retries=5), transport=recording) as c:
                assert len(await c.models()) == 1
            assert recording.statuses[0] == 429 and recording.statuses[-1] == 200
            assert set(recording.statuses[:-1]) == {429} and 2 <= len(recording.statuses) <= 4
            assert time.monotonic() - started >= 1.0  # each wait was the server's Retry-After: 1
        finally:
            release.set()
            # A holder the cap refused (a slot of this key still counting, e.g. a killed server's,
            # in the Redis every test shares) is cut off while it sends: what it was is not the test.
            done = await asyncio.gather(*holders, return_exceptions=True)
    admitted = [r for r in done if isinstance(r, httpx.Response) and r.status_code != 429]
    assert admitted and all(r.status_code == 201 for r in admitted), done
