"""The production API over real HTTP (real engine, sessions in real Redis): tenants, sessions,
streaming, concurrent turns and client disconnects."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from service.client.sse import iter_events
from service.core.session_store import KEY_PREFIX
from tests.conftest import AUTH, OTHER_KEY
from tests.media import picture

pytestmark = pytest.mark.e2e

OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
IMAGE = [("image", ("a.png", picture(1, (96, 64))))]


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def raw_redis(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def turn(client: httpx.Client, message: str, session_id: str | None = None, **form: str) -> httpx.Response:
    data = {"message": message, "max_tokens": "6", **form} | ({"session_id": session_id} if session_id else {})
    return client.post("/chat", data=data, files=None if session_id else IMAGE)


def events(lines: Iterator[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs of a server-sent event stream (the client's parser: the repo has one)."""
    for event in iter_events(lines):
        yield event.event, json.loads(event.data)


def metric(client: httpx.Client, name: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return sum(s.value for s in families[name].samples if s.name.endswith("_total") or s.name == name)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}])
def test_work_needs_a_valid_key(server: str, headers: dict) -> None:
    r = httpx.post(f"{server}/chat", data={"message": "hi"}, files=IMAGE, headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server}/healthz").status_code == 200  # probes need no key


def test_a_bad_key_gets_401_before_its_body_is_read(server: str) -> None:
    """A 50 MiB upload with a wrong key, over a raw socket: after 4 KiB of the body the answer is
    already there, so the server needed none of the rest."""
    url = httpx.URL(server)
    head = (
        f"POST /chat HTTP/1.1\r\nHost: {url.host}\r\nAuthorization: Bearer wrong\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {50 * 2**20}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.host, url.port), timeout=30) as sock:
        sock.sendall(head + b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n')
        sock.sendall(b"\0" * 4096)
        answer = ""
        while "authentication_error" not in answer and (chunk := sock.recv(65536)):
            answer += chunk.decode("latin-1")
    assert answer.startswith("HTTP/1.1 401") and "authentication_error" in answer


def test_another_keys_session_is_not_found(client: httpx.Client, server: str) -> None:
    sid = turn(client, "Mine").json()["session_id"]
    with httpx.Client(base_url=server, timeout=60, headers=OTHER) as other:
        assert other.get(f"/sessions/{sid}").status_code == 404
        assert turn(other, "Yours?", sid).status_code == 404
        assert other.delete(f"/sessions/{sid}").status_code == 404
    assert client.get(f"/sessions/{sid}").status_code == 200


def test_session_create_read_delete(client: httpx.Client, raw_redis: redis.Redis) -> None:
    r = client.post("/sessions", json={"metadata": {"app": "tests", "user": "u1"}})
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert r.json()["metadata"] == {"app": "tests", "user": "u1"} and r.json()["turns"] == []
    first = client.post("/chat", data={"message": "Hi", "max_tokens": "4", "session_id": sid}, files=IMAGE)
    assert first.status_code == 200 and first.json()["session_id"] == sid
    view = client.get(f"/sessions/{sid}").json()
    assert len(view["turns"]) == 1 and "tenant" not in view
    assert raw_redis.ttl(KEY_PREFIX + sid) > 0
    assert client.delete(f"/sessions/{sid}").status_code == 204
    assert client.get(f"/sessions/{sid}").status_code == 404


def test_streamed_turn_adds_up_to_the_reply(client: httpx.Client) -> None:
    plain = turn(client, "Describe it.", temperature="0", max_tokens="16").json()
    with client.stream(
        "POST",
        "/chat",
        data={"message": "Describe it.", "temperature": "0", "max_tokens": "16", "stream": "true"},
        files=IMAGE,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        received = list(events(r.iter_lines()))
    deltas = [data["text"] for name, data in received if name == "delta"]
    name, done = received[-1]
    assert name == "done" and done["reply"] == "".join(deltas) == plain["reply"]
    assert done["usage"] == plain["usage"] and done["finish_reason"] == plain["finish_reason"]


def test_stream_errors_before_it_starts_are_plain_4xx(client: httpx.Client) -> None:
    r = client.post("/chat", data={"message": "x", "stream": "true", "session_id": "sess_" + "0" * 32})
    assert r.status_code == 404 and r.json()["error"]["param"] == "session_id"


def test_concurrent_turn_gets_409_and_both_histories_stay_intact(client: httpx.Client, raw_redis: redis.Redis) -> None:
    sid = turn(client, "First").json()["session_id"]
    other_sid = turn(client, "Elsewhere").json()["session_id"]
    form = {"message": "Long one", "max_tokens": "200", "stream": "true", "session_id": sid}
    with client.stream("POST", "/chat", data=form) as r:
        stream = events(r.iter_lines())
        assert next(stream)[0] == "delta"  # generating: the session is locked
        second = turn(client, "Meanwhile", sid)
        assert second.status_code == 409 and second.json()["error"]["type"] == "conflict_error"
        assert turn(client, "Unrelated", other_sid).status_code == 200  # other sessions are not blocked
        assert list(stream)[-1][0] == "done"
    view = client.get(f"/sessions/{sid}").json()
    assert [t["message"] for t in view["turns"]] == ["First", "Long one"]
    assert [t["message"] for t in client.get(f"/sessions/{other_sid}").json()["turns"]] == ["Elsewhere", "Unrelated"]
    assert turn(client, "After", sid).status_code == 200  # the lock was released


def test_client_disconnect_aborts_and_commits_nothing(client: httpx.Client, raw_redis: redis.Redis) -> None:
    sid = turn(client, "First").json()["session_id"]
    before = raw_redis.hgetall(KEY_PREFIX + sid)
    aborted = metric(client, "pandaserve_aborted_generations")
    form = {"message": "Go on and on", "max_tokens": "400", "stream": "true", "session_id": sid}
    with client.stream("POST", "/chat", data=form) as r:
        assert next(events(r.iter_lines()))[0] == "delta"
    # The response is closed mid-stream: the server notices, aborts the engine request, commits nothing.
    deadline = time.monotonic() + 30
    while metric(client, "pandaserve_aborted_generations") <= aborted and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(client, "pandaserve_aborted_generations") == aborted + 1
    assert raw_redis.hgetall(KEY_PREFIX + sid) == before
    assert turn(client, "Still here?", sid).status_code == 200  # and the lock is free


def test_request_ids_are_honoured_or_created(client: httpx.Client) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
    created = client.get("/healthz").headers["x-request-id"]
    assert len(created) == 32
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id; with spaces"}).headers["x-request-id"]
    assert len(replaced) == 32 and replaced != created


METRICS = [
    "pandaserve_requests",
    "pandaserve_request_duration_seconds",
    "pandaserve_requests_in_flight",
    "pandaserve_prompt_tokens",
    "pandaserve_generation_tokens",
    "pandaserve_time_to_first_token_seconds",
    "pandaserve_inter_token_latency_seconds",
    "pandaserve_time_per_output_token_seconds",
    "pandaserve_e2e_request_latency_seconds",
    "pandaserve_queue_time_seconds",
    "pandaserve_media_decode_seconds",
    "pandaserve_media_encode_seconds",
    "pandaserve_encoder_batch_size",
    "pandaserve_aborted_generations",
    "pandaserve_embedding_cache_lookups",
]


def test_every_metric_is_exposed_and_moves_with_traffic(client: httpx.Client) -> None:
    def counts() -> dict[str, float]:
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
        assert set(METRICS) <= set(families)
        return {
            name: sum(s.value for s in families[name].samples if s.name.endswith(("_count", "_total")))
            for name in METRICS
        }

    before = counts()
    # New bytes on every run: the embedding cache (shared in Redis across runs) must miss.
    seed = time.time_ns() % 2**31
    files = [("image", ("a.png", picture(seed, (64, 64)))), ("image", ("b.png", picture(seed + 1, (80, 64))))]
    assert client.post("/chat", data={"message": "Count me", "max_tokens": "5"}, files=files).status_code == 200
    after = counts()
    # All but the in-flight gauge (back where it was) and the abort counter (nothing was aborted).
    for name in set(METRICS) - {"pandaserve_requests_in_flight", "pandaserve_aborted_generations"}:
        assert after[name] > before[name], name
