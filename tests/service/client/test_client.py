"""The client against a mock HTTP server (httpx.MockTransport, the HTTP seam): what it sends, how it
reads replies and streams, its one error type, and the retry rule. tests/service/client/test_live.py
runs it against the real server."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from encoders.modalities import MODALITIES as SERVER_MODALITIES
from service.client import (
    MODALITIES,
    AsyncClient,
    Attachment,
    ChatReply,
    Client,
    Delta,
    PandaServeError,
    Retry,
    Usage,
)
from service.client.protocol import retry_after_s

pytestmark = pytest.mark.unit

URL = "http://panda.test"
REPLY = {"session_id": "sess_" + "a" * 32, "reply": "Two squares.", "finish_reason": "stop"}
REPLY |= {"usage": {"prompt_tokens": 21, "completion_tokens": 4}, "token_ids": None}
NO_WAIT = Retry(retries=3, backoff_s=0.0)


def sse(event: str, body: object) -> str:
    return f"event: {event}\ndata: {json.dumps(body)}\n\n"


def envelope(status: int, kind: str, message: str, param: str | None = None, **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": kind, "message": message, "param": param}}, headers=headers)


def parse_form(request: httpx.Request) -> tuple[dict[str, str], list[tuple[str, str, bytes]]]:
    """(fields, [(field, filename, bytes)]) of a multipart or urlencoded body."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/"):
        return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}, []
    message = BytesParser(policy=policy.HTTP).parsebytes(f"Content-Type: {kind}\r\n\r\n".encode() + request.content)
    fields: dict[str, str] = {}
    files: list[tuple[str, str, bytes]] = []
    for part in message.iter_parts():
        name = str(part.get_param("name", header="content-disposition"))
        data = part.get_payload(decode=True)
        assert isinstance(data, bytes)
        if part.get_filename() is None:
            fields[name] = data.decode()
        else:
            files.append((name, str(part.get_filename()), data))
    return fields, files


class FakeServer:
    """Answers /chat (JSON or events), /embeddings, /sessions and /v1/models like the real server;
    responses put in `first` are given, in order, before that."""

    def __init__(self, *first: httpx.Response, events: list[str] | None = None) -> None:
        self.first = list(first)
        self.events = events or [sse("delta", {"text": "Two "}), sse("delta", {"text": "squares."}), sse("done", REPLY)]
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if self.first:
            return self.first.pop(0)
        path = request.url.path
        if path == "/chat":
            if parse_form(request)[0].get("stream") == "true":
                return httpx.Response(200, text="".join(self.events), headers={"content-type": "text/event-stream"})
            return httpx.Response(200, json=REPLY)
        if path == "/embeddings":
            _, files = parse_form(request)
            vector = {"sha256": "0" * 64, "embedding": [0.5, -1]}
            data = [{"field": f"{f}[0]", "modality": f} | vector for f, _, _ in files]
            return httpx.Response(200, json={"data": data, "dimensions": 2})
        if path == "/v1/models":
            return httpx.Response(
                200, json={"object": "list", "data": [{"id": "demo", "object": "model", "created": 1}]}
            )
        if path.startswith("/sessions"):
            if request.method == "DELETE":
                return httpx.Response(204)
            turn = {"message": "Hi", "reply": "Two squares.", "finish_reason": "stop", "created_at": 2.0}
            turn["media"] = [{"modality": "image", "sha256": "f" * 64, "bytes": 9}]
            body = {"session_id": REPLY["session_id"], "created_at": 1.0, "metadata": {"user": "u1"}, "turns": [turn]}
            return httpx.Response(201 if request.method == "POST" else 200, json=body)
        return envelope(404, "not_found_error", f"no route {path}")


def client(server: FakeServer, retry: Retry = NO_WAIT) -> Client:
    return Client(URL, api_key="k1", transport=httpx.MockTransport(server), retry=retry)


def async_client(server: FakeServer, retry: Retry = NO_WAIT) -> AsyncClient:
    return AsyncClient(URL, api_key="k1", transport=httpx.MockTransport(server), retry=retry)


def test_the_client_names_the_servers_six_fields() -> None:
    assert tuple(SERVER_MODALITIES) == MODALITIES


def test_a_turn_sends_the_form_and_files_in_their_fields_and_reads_the_reply(tmp_path: Path) -> None:
    photo = tmp_path / "photo.JPG"
    photo.write_bytes(b"jpeg bytes")
    server = FakeServer()
    files = [photo, ("heat.png", b"png", "thermal"), ("clip.wav", b"wav"), Attachment.of("d.npy", b"npy", "depth")]
    with client(server) as c:
        reply = c.chat("What is it?", files, max_tokens=8, temperature=0.0, seed=3)
    assert reply == ChatReply(REPLY["session_id"], "Two squares.", "stop", Usage(21, 4), None)
    request = server.seen[0]
    assert request.headers["authorization"] == "Bearer k1"
    fields, sent = parse_form(request)
    assert fields == {"message": "What is it?", "max_tokens": "8", "temperature": "0.0", "seed": "3"}
    assert sent == [
        ("image", "photo.JPG", b"jpeg bytes"),
        ("thermal", "heat.png", b"png"),
        ("audio", "clip.wav", b"wav"),
        ("depth", "d.npy", b"npy"),
    ]


def test_a_later_turn_names_its_session_and_needs_no_files() -> None:
    server = FakeServer()
    with client(server) as c:
        c.chat("And the colour?", session=REPLY["session_id"], return_token_ids=True)
    fields, files = parse_form(server.seen[0])
    assert fields == {"message": "And the colour?", "session_id": REPLY["session_id"], "return_token_ids": "true"}
    assert files == []


def test_a_modality_the_extension_cannot_tell_must_be_named() -> None:
    with pytest.raises(ValueError, match=r"x\.npy: cannot tell the modality"):
        Attachment.of("x.npy", b"")
    with pytest.raises(ValueError, match="unknown modality 'smell'"):
        Attachment.of("x.png", b"", "smell")
    assert Attachment.of("x.csv", b"").modality == "imu"


def test_a_stream_yields_deltas_then_its_reply() -> None:
    with client(FakeServer()) as c:
        stream = c.chat("What is it?", [("a.png", b"png")], stream=True)
        deltas = list(stream)
        assert deltas == [Delta("Two "), Delta("squares.")]
        assert stream.reply.reply == "".join(d.text for d in deltas) == "Two squares."
        assert c.chat("Again?", session="s", stream=True).reply.usage == Usage(21, 4)  # reply reads it all
        with c.chat("Again?", session="s", stream=True) as stream:
            assert next(iter(stream)) == Delta("Two ")  # a loop left early: the rest is still there
            assert list(stream) == [Delta("squares.")]
            assert stream.reply.reply == "Two squares."


@pytest.mark.parametrize(
    ("events", "kind", "message"),
    [
        ([sse("delta", {"text": "a"}), sse("error", {"error": {"type": "engine_error", "message": "engine died"}})],
         "engine_error", "engine died"),
        ([sse("delta", {"text": "a"})], "stream_error", "ended before its done event"),
        (["event: delta\ndata: {not json\n\n"], "stream_error", "not JSON"),
        ([sse("done", {"reply": "no session, no usage"})], "stream_error", "without the fields"),
    ],
)  # fmt: skip
def test_a_stream_that_fails_raises_the_one_error_type(events: list[str], kind: str, message: str) -> None:
    with client(FakeServer(events=events)) as c:
        stream = c.chat("Hi", session="s", stream=True)
        with pytest.raises(PandaServeError, match=message) as caught:
            list(stream)
    assert (caught.value.type, caught.value.status) == (kind, None)


def test_errors_carry_the_status_type_message_and_param() -> None:
    refusal = envelope(415, "unsupported_media_type_error", "image[0]: not a supported image type", "image")
    with client(FakeServer(refusal)) as c, pytest.raises(PandaServeError) as caught:
        c.chat("What is it?", [("a.png", b"junk")], stream=True)  # refused before a stream: raised at the call
    error = caught.value
    assert (error.status, error.type, error.param) == (415, "unsupported_media_type_error", "image")
    assert error.message == "image[0]: not a supported image type"
    assert str(error) == "HTTP 415 unsupported_media_type_error: image[0]: not a supported image type"


def test_a_body_that_is_not_the_envelope_is_shown_as_it_is() -> None:
    proxy = httpx.Response(502, text="<html>Bad Gateway</html>")
    with client(FakeServer(proxy)) as c, pytest.raises(PandaServeError) as caught:
        c.models()
    assert (caught.value.status, caught.value.type, caught.value.message) == (
        502,
        "http_error",
        "<html>Bad Gateway</html>",
    )


def test_a_connection_that_fails_is_the_same_error_type() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with Client(URL, transport=httpx.MockTransport(refuse)) as c, pytest.raises(PandaServeError) as caught:
        c.models()
    assert (caught.value.status, caught.value.type) == (None, "connection_error")
    assert "connection refused" in caught.value.message


def test_429_and_503_are_retried_honouring_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("service.client.sync.time.sleep", waits.append)
    server = FakeServer(
        envelope(429, "rate_limit_error", "rate limit of 6 requests per minute reached", **{"Retry-After": "2"}),
        envelope(503, "not_ready_error", "the service is starting"),  # no Retry-After: the backoff
        envelope(503, "overloaded_error", "at capacity", **{"Retry-After": "1"}),
    )
    with client(server, Retry(retries=3, backoff_s=0.25)) as c:
        assert c.chat("Hi", [("a.png", b"png")]).reply == "Two squares."
    assert waits == [2.0, 0.5, 1.0]  # Retry-After, then 0.25 * 2**1, then Retry-After
    assert len(server.seen) == 4 and all(
        parse_form(r) == parse_form(server.seen[0]) for r in server.seen
    )  # resent whole


def test_retries_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("service.client.sync.time.sleep", waits.append)
    busy = [envelope(429, "rate_limit_error", "slow down", **{"Retry-After": "1"}) for _ in range(4)]
    with client(FakeServer(*busy), Retry(retries=2)) as c, pytest.raises(PandaServeError) as caught:
        c.models()
    assert (caught.value.status, caught.value.retry_after_s, waits) == (429, 1.0, [1.0, 1.0])

    # A wait longer than max_wait_s is not waited out: raised at once, with the server's Retry-After.
    far = envelope(429, "rate_limit_error", "rate limit of 1 requests per minute reached", **{"Retry-After": "60"})
    with client(FakeServer(far), Retry(max_wait_s=30)) as c, pytest.raises(PandaServeError) as caught:
        c.models()
    assert (caught.value.retry_after_s, len(waits)) == (60.0, 2)

    # Nothing else is retried: a 4xx is the caller's to fix, a 500 may have done work.
    for status in (400, 409, 413, 500):
        server = FakeServer(envelope(status, "x", "no"), envelope(status, "x", "no"))
        with client(server) as c, pytest.raises(PandaServeError):
            c.models()
        assert len(server.seen) == 1


def test_retry_after_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 12, 2, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert [retry_after_s(v, now.timestamp()) for v in ("3", " 1.5 ", later, "soon", "-1", "nan", None)] == [
        3.0, 1.5, 90.0, None, None, None, None,
    ]  # fmt: skip
    assert retry_after_s(format_datetime(now - timedelta(seconds=5), usegmt=True), now.timestamp()) == 0.0


def test_upload_progress_counts_every_byte_and_starts_again_on_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.client.sync.time.sleep", lambda s: None)
    seen: list[tuple[int, int]] = []
    big = bytes(300_000)
    server = FakeServer(envelope(503, "overloaded_error", "at capacity", **{"Retry-After": "0"}))
    with client(server) as c:
        c.chat("Hi", [("a.png", big)], on_upload=lambda sent, total: seen.append((sent, total)))
    total = int(server.seen[0].headers["content-length"])
    assert total > len(big) and {t for _, t in seen} == {total}
    starts = [i for i, (sent, _) in enumerate(seen) if sent == 0]
    assert len(starts) == 2  # one count per attempt
    for attempt in (seen[: starts[1]], seen[starts[1] :]):
        sent = [s for s, _ in attempt]
        assert sent == sorted(sent) and sent[-1] == total and len(sent) > 4  # in pieces, not one jump


def test_embeddings_sessions_and_models_are_typed() -> None:
    server = FakeServer()
    with client(server) as c:
        embeddings = c.embed([("a.png", b"p"), ("b.wav", b"w")])
        assert [(e.field, e.embedding) for e in embeddings.data] == [
            ("image[0]", [0.5, -1.0]), ("audio[0]", [0.5, -1.0]),
        ]  # fmt: skip
        assert embeddings.dimensions == 2
        created = c.create_session({"user": "u1"})
        assert json.loads(server.seen[-1].content) == {"metadata": {"user": "u1"}}
        session = c.get_session(created.session_id)
        assert (session.metadata, session.turns[0].reply, session.turns[0].media[0].modality) == (
            {"user": "u1"}, "Two squares.", "image",
        )  # fmt: skip
        c.delete_session(session.session_id)
        assert (server.seen[-1].method, server.seen[-1].url.path) == ("DELETE", f"/sessions/{session.session_id}")
        assert [m.id for m in c.models()] == ["demo"]


async def test_the_async_client_shares_the_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    monkeypatch.setattr("service.client.aio.asyncio.sleep", sleep)
    server = FakeServer(envelope(429, "rate_limit_error", "slow down", **{"Retry-After": "1"}))
    async with async_client(server) as c:
        stream = await c.chat("What is it?", [("a.png", b"png")], stream=True, max_tokens=4)
        assert [d.text async for d in stream] == ["Two ", "squares."]
        assert (await stream.reply()).session_id == REPLY["session_id"]
        assert (await c.chat("Again", session="s")).usage == Usage(21, 4)
        assert (await c.embed([("a.png", b"p")])).data[0].field == "image[0]"
        assert (await c.get_session("s")).turns[0].message == "Hi"
        assert [m.id for m in await c.models()] == ["demo"]
    assert waits == [1.0]
    assert parse_form(server.seen[1])[0] == {"message": "What is it?", "max_tokens": "4", "stream": "true"}

    refusal = envelope(422, "invalid_request_error", "message: Field required", "message")
    async with async_client(FakeServer(refusal)) as c:
        with pytest.raises(PandaServeError) as caught:
            await c.chat("")
    assert (caught.value.status, caught.value.param) == (422, "message")
    bad = [sse("error", {"error": {"type": "engine_error", "message": "engine died", "param": None}})]
    async with async_client(FakeServer(events=bad)) as c:
        stream = await c.chat("Hi", session="s", stream=True)
        with pytest.raises(PandaServeError, match="engine died"):
            await stream.reply()
