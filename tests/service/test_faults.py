"""Faults between our own parts (issue 14, item 7): Redis stopped, restarted, out of memory and
read-only (a Redis of this module's own), the engine (a stock vLLM server) and a decode worker
killed with SIGKILL, before and during turns. Every turn a fault hits is a 503 (never a 500), the
service recovers by itself, and after each fault the invariants hold: no session lock left beyond
its lease, no in-flight slot of the rate limiter leaked, no committed turn lost or duplicated.
The figures go to build/reliability/faults.json (RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from benchmarks.server import Server, free_port, stock_engine
from service.core.session_store import KEY_PREFIX
from tests.conftest import AUTH, REPO, OwnRedis, RunningServer, engine_killed, running_server
from tests.media import picture

pytestmark = pytest.mark.e2e

LOCK_TTL_S = 3  # a turn's lease: a lock a fault left behind is gone this soon
REPORT = REPO / "build" / "reliability" / "faults.json"
results: list[dict[str, Any]] = []
retries_after_recovery: list[str] = []  # faults after which a turn needed a retry once ready again


@pytest.fixture(scope="module")
def engine(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with stock_engine(demo_bundle, tmp_path_factory.mktemp("engine")) as running:
        yield running


@pytest.fixture(scope="module")
def api(
    demo_bundle: Path, own_redis: OwnRedis, engine: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    # The engine is a process of its own, so it can be killed and started again under a live API;
    # the encoders stay in the API, so its decode workers are its children.
    env = {"PANDASERVE_ENGINE_URL": engine.url, "PANDASERVE_SESSION_LOCK_TTL_S": str(LOCK_TTL_S)}
    env["PANDASERVE_IN_FLIGHT_DEADLINE_S"] = str(IN_FLIGHT_DEADLINE_S)
    with running_server(demo_bundle, own_redis.url, tmp_path_factory.mktemp("faults"), env) as running:
        yield running


@pytest.fixture(scope="module")
def client(api: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, headers=AUTH, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def store(own_redis: OwnRedis) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(own_redis.url, socket_timeout=5)
    yield r
    r.close()


class Conversation:
    """A session and the turns committed to it, as the client saw them succeed."""

    def __init__(self, client: httpx.Client) -> None:
        self.client, self.committed = client, ["Hello"]
        r = client.post("/chat", data={"message": "Hello", "max_tokens": "4"}, files=image(1))
        assert r.status_code == 200, r.text
        self.id = r.json()["session_id"]

    def turn(self, message: str, **form: str) -> httpx.Response:
        r = self.client.post("/chat", data={"message": message, "max_tokens": "4", "session_id": self.id} | form)
        if r.status_code == 200:
            self.committed.append(message)
        return r

    def stored(self) -> list[str]:
        r = self.client.get(f"/sessions/{self.id}")
        assert r.status_code == 200, r.text
        return [t["message"] for t in r.json()["turns"]]


@pytest.fixture(scope="module")
def conversation(client: httpx.Client) -> Conversation:
    return Conversation(client)


def image(seed: int) -> list[tuple[str, tuple[str, bytes]]]:
    return [("image", ("a.png", picture(seed, (64, 64))))]


IN_FLIGHT_KEYS = "pandaserve:rate:*:slots"
IN_FLIGHT_DEADLINE_S = 5  # the API's: how long a slot never given back counts


def in_flight(store: redis.Redis) -> int:
    """In-flight slots that still count, over every tenant: members of the rate limiter's sorted sets
    (slot id -> deadline, ms) whose deadline has not passed. A request whose Redis failed as it ended
    cannot give its slot back; the slot stops counting at its deadline."""
    now_ms = time.time() * 1000
    return sum(store.zcount(key, now_ms, "+inf") for key in store.scan_iter(match=IN_FLIGHT_KEYS))


@pytest.fixture(autouse=True)
def no_leak_carried_over(store: redis.Redis) -> Iterator[None]:
    """A slot one test left is not the next test's: the sorted sets start empty."""
    yield
    for key in store.scan_iter(match=IN_FLIGHT_KEYS):
        store.delete(key)


def locks(store: redis.Redis) -> list[bytes]:
    return list(store.scan_iter(match=f"{KEY_PREFIX}*:lock"))


def eventually(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return condition()


def unhandled(api: RunningServer) -> int:
    """Errors that escaped every handler (a 500, or an exception after the answer was sent)."""
    return sum('"unhandled error' in line or "Exception in ASGI application" in line for line in lines(api))


def lines(api: RunningServer) -> list[str]:
    return api.log.read_text().splitlines()


def assert_invariants(
    api: RunningServer, fault: str, store: redis.Redis, client: httpx.Client, conversation: Conversation
) -> None:
    """After a fault, once the service is ready again: no lock beyond its lease, no in-flight slot,
    every committed turn there exactly once; and the conversation goes on."""
    assert eventually(lambda: client.get("/readyz").status_code == 200, 60), f"{fault}: not ready again"
    assert eventually(lambda: not locks(store), LOCK_TTL_S + 2), f"{fault}: locks left: {locks(store)}"
    assert conversation.stored() == conversation.committed, fault
    assert unhandled(api) == 0, f"{fault}: unhandled errors in the server's log"
    # As a client would: a 503 is retried after its Retry-After, and counted (a pooled connection a
    # Redis restart broke used to fail one more command; the client now reconnects and resends it).
    for _ in range(3):
        after = conversation.turn(f"After {fault}")
        if after.status_code != 503:
            break
        retries_after_recovery.append(fault)
        time.sleep(1)
    assert after.status_code == 200, (fault, after.text)
    assert conversation.stored() == conversation.committed, fault
    # Last: a slot a failed request could not give back counts until its deadline, no longer.
    assert eventually(lambda: in_flight(store) == 0, IN_FLIGHT_DEADLINE_S + 2), f"{fault}: in-flight slots left"


def record(fault: str, statuses: list[int], started: float) -> None:
    results.append({"fault": fault, "statuses": statuses, "seconds": round(time.monotonic() - started, 2)})
    assert all(s < 500 or s == 503 for s in statuses), (fault, statuses)


def streamed_turn(client: httpx.Client, session: str, on_first_delta: Callable[[], None]) -> int:
    """A long streamed turn; `on_first_delta` runs once it is generating. Its status: 200 when the
    stream ended with `done`, 503 when with an `error` event (or the status it was refused with)."""
    form = {"message": "Tell me everything.", "max_tokens": "400", "temperature": "1", "seed": "7"}
    with client.stream("POST", "/chat", data=form | {"stream": "true", "session_id": session}) as r:
        if r.status_code != 200:
            r.read()
            return r.status_code
        fired = False
        for line in r.iter_lines():
            if line.startswith("event: delta") and not fired:
                fired = True
                on_first_delta()
            if line.startswith("event: error"):
                return 503
            if line.startswith("event: done"):
                return 200
    return 0


# -- Redis --------------------------------------------------------------------------------------------


def test_redis_stopped_between_turns_is_503_and_the_service_recovers(
    api: RunningServer, own_redis: OwnRedis, store: redis.Redis, client: httpx.Client, conversation: Conversation
) -> None:
    started = time.monotonic()
    own_redis.stop()
    during = conversation.turn("During the outage")
    assert during.status_code == 503, during.text
    assert "session store (Redis) is unavailable" in during.json()["error"]["message"]
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").status_code == 200  # alive, just not ready
    own_redis.start()  # its append-only file brings back every committed turn
    record("redis stopped between turns", [during.status_code], started)
    assert_invariants(api, "redis restart", store, client, conversation)


def test_redis_stopped_mid_turn_loses_only_that_turn(
    api: RunningServer, own_redis: OwnRedis, store: redis.Redis, client: httpx.Client, conversation: Conversation
) -> None:
    """Redis goes while a streamed turn generates: that turn fails (its commit cannot happen), and
    when Redis is back the session has exactly its committed turns, no lock and no in-flight slot."""
    started = time.monotonic()
    status = streamed_turn(client, conversation.id, own_redis.stop)
    own_redis.start()
    record("redis stopped mid-turn", [status], started)
    assert status == 503, status
    assert_invariants(api, "redis stopped mid-turn", store, client, conversation)


def test_redis_out_of_memory_is_503_and_nothing_is_left(
    api: RunningServer, store: redis.Redis, client: httpx.Client, conversation: Conversation
) -> None:
    """`maxmemory` below what Redis holds, `noeviction`: every write is refused with OOM, before
    a turn (its lock) and at its commit; then memory is given back and the service goes on."""
    started = time.monotonic()
    statuses = []
    store.config_set("maxmemory-policy", "noeviction")
    store.config_set("maxmemory", 1)  # below what it holds: every write that may grow memory fails
    try:
        statuses.append(conversation.turn("Out of memory").status_code)
        statuses.append(client.post("/sessions", json={}).status_code)
    finally:
        store.config_set("maxmemory", 0)
    assert statuses == [503, 503], statuses

    # Out of memory as a streamed turn generates: its commit is refused.
    def fill() -> None:
        store.config_set("maxmemory", 1)

    try:
        statuses.append(streamed_turn(client, conversation.id, fill))
    finally:
        store.config_set("maxmemory", 0)
    record("redis out of memory", statuses, started)
    assert statuses[-1] == 503, statuses
    assert_invariants(api, "redis out of memory", store, client, conversation)


def test_redis_read_only_is_503_and_nothing_is_left(
    api: RunningServer, store: redis.Redis, client: httpx.Client, conversation: Conversation
) -> None:
    """Redis made a replica of a master that is not there (as after a failover gone wrong): its data
    stays readable, every write is READONLY; then it is made a master again."""
    started = time.monotonic()
    store.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        read_only = conversation.turn("Read-only")
        # A read refreshes the session's expiry, a write: 503 too, never a 500.
        assert client.get(f"/sessions/{conversation.id}").status_code == 503
    finally:
        store.execute_command("REPLICAOF", "NO", "ONE")
    assert read_only.status_code == 503, read_only.text
    statuses = [read_only.status_code]

    def demote() -> None:
        store.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))

    try:
        statuses.append(streamed_turn(client, conversation.id, demote))
    finally:
        store.execute_command("REPLICAOF", "NO", "ONE")
    record("redis read-only", statuses, started)
    assert statuses[-1] == 503, statuses
    assert_invariants(api, "redis read-only", store, client, conversation)


# -- a decode worker ----------------------------------------------------------------------------------


def decode_workers(api: RunningServer) -> list[int]:
    """The API's decode workers: its children started by multiprocessing's spawn (not its resource
    tracker). With the engine remote, the API has no other such children."""
    pids = []
    for task in Path(f"/proc/{api.proc.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
                pids.append(int(pid))
    return pids


def slow_video(seed: int) -> bytes:
    """A 720p video of one keyframe and 19 s of predicted frames: about a second or more of decoding
    on a shared CPU, long enough to be killed in; a new seed is new bytes (no embedding cache hit)."""
    from tests.encoders.test_video import make_video

    return make_video("mp4", "libx264", 1280, 720, Fraction(24 + seed % 5), 19 * 24, None, 100_000)


def send_in_background(client: httpx.Client, **request: Any) -> Callable[[], httpx.Response]:
    """Send a /chat request from a thread; the function returned waits for its answer (a hang fails)."""
    answer: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answer.append(client.post("/chat", **request)))
    sender.start()

    def wait() -> httpx.Response:
        sender.join(60)
        assert answer, "no answer within 60 s: a hang"
        return answer[0]

    return wait


def test_decode_workers_killed_mid_decode_fail_only_that_turn(
    api: RunningServer, store: redis.Redis, client: httpx.Client, conversation: Conversation
) -> None:
    """Two slow videos keep both workers busy; both are killed: that turn is 503 naming the field,
    with Retry-After, and both workers are replaced. (A decode can end before the kill lands: then
    again, with new bytes, so no embedding is cached.)"""
    started = time.monotonic()
    statuses = []
    for attempt in range(3):
        files = [("video", (f"v{i}.mp4", slow_video(2 * attempt + i))) for i in range(2)]
        form = {"message": f"Killed decode {attempt}", "max_tokens": "4", "session_id": conversation.id}
        answer = send_in_background(client, data=form, files=files)
        time.sleep(0.5)
        for pid in decode_workers(api):
            os.kill(pid, signal.SIGKILL)
        r = answer()
        statuses.append(r.status_code)
        if r.status_code == 200:
            conversation.committed.append(form["message"])
            continue
        error = r.json()["error"]
        assert r.status_code == 503 and error["param"] == "video", r.text
        assert "decode worker stopped" in error["message"] and r.headers["retry-after"]
        break
    record("decode workers killed mid-decode", statuses, started)
    assert 503 in statuses, statuses
    assert_invariants(api, "decode workers killed", store, client, conversation)
    assert eventually(lambda: len(decode_workers(api)) == 2, 30)  # both replaced


def test_an_idle_decode_worker_killed_fails_no_file(api: RunningServer, client: httpx.Client) -> None:
    """A worker killed while idle (the OOM killer's choice) held no file: no file fails for it (the
    pool hands the file to another worker and replaces the dead one)."""
    assert eventually(lambda: client.get("/readyz").status_code == 200, 60)
    for pid in decode_workers(api):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    statuses = [client.post("/embeddings", files=image(100 + i)).status_code for i in range(2)]
    assert eventually(lambda: client.get("/readyz").status_code == 200, 60)
    assert statuses == [200, 200], statuses


# -- the engine ---------------------------------------------------------------------------------------


def test_the_engine_killed_mid_turn_loses_only_that_turn_and_the_api_recovers(
    api: RunningServer,
    engine: Server,
    demo_bundle: Path,
    store: redis.Redis,
    client: httpx.Client,
    conversation: Conversation,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Last in the module: it kills the module's engine (the engine that replaces it serves the end)."""
    started = time.monotonic()
    statuses: list[int] = []
    logs = tmp_path_factory.mktemp("engine-again")

    def kill() -> None:
        os.killpg(engine.proc.pid, signal.SIGKILL)

    statuses.append(streamed_turn(client, conversation.id, kill))
    assert statuses[0] in (0, 503), statuses  # the stream's error event, or its connection cut
    with engine_killed(api, engine, demo_bundle, logs):  # its kill finds it dead: the 503s and the recovery
        record("engine killed mid-turn", statuses, started)
        assert_invariants(api, "engine killed", store, client, conversation)


def test_report(conversation: Conversation) -> None:
    """Last: the figures of the faults above, for RELIABILITY.md."""
    assert len(results) == 6, results
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "faults": results,
                "committed_turns": len(conversation.committed),
                "retries_after_recovery": retries_after_recovery,
            },
            indent=1,
        )
    )
