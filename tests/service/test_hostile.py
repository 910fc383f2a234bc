"""The hostile corpus (tests/hostile.py) against one live server: every case is answered within
the time bound with a status its case accepts (never a 5xx but 503), a refusal names the field at
fault, and after all of them the server is still ready, its memory bounded and the session the
corpus aimed at unchanged. The figures go to build/reliability/hostile.json (RELIABILITY.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AUTH, REPO, OwnRedis, RunningServer, running_server
from tests.hostile import SESSION, Case, corpus, send_raw
from tests.media import picture

pytestmark = pytest.mark.e2e

TIME_BOUND_S = 60.0  # per case: the decode deadline (PANDASERVE_DECODE_DEADLINE_S) is 60 s too
CASES = corpus()
REPORT = REPO / "build" / "reliability" / "hostile.json"
# Resident memory the corpus may add to the server process: its in-process embedding LRU is capped
# at 64 MiB here (PANDASERVE_EMBEDDING_CACHE_BYTES), and every other byte a request holds (a 40 MiB
# body, a decoded 8 MiB message) is freed when it is answered; the rest is allocator slack.
RSS_GROWTH_BOUND = 512 * 2**20
results: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def served(demo_bundle: Path, own_redis: OwnRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # Its own Redis: the corpus's failed authentications, counted per client address, must not
    # reach other modules' servers (nor theirs this one); and it may send them all, since the
    # address limit is not what it tests (tests/service/core/test_rate_limit.py does).
    env = {"PANDASERVE_AUTH_FAILURES_PER_MINUTE": "100000", "PANDASERVE_EMBEDDING_CACHE_BYTES": str(64 * 2**20)}
    with running_server(demo_bundle, own_redis.url, tmp_path_factory.mktemp("hostile"), env) as running:
        yield running


@pytest.fixture(scope="module")
def client(served: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=TIME_BOUND_S) as c:
        yield c


@pytest.fixture(scope="module")
def session(client: httpx.Client) -> str:
    r = client.post(
        "/chat",
        data={"message": "Look.", "max_tokens": "4"},
        files=[("image", ("a.png", picture(9, (64, 48))))],
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


@pytest.fixture(scope="module")
def before(served: RunningServer, client: httpx.Client, session: str) -> dict[str, Any]:
    """What the corpus must leave as it was: the session, and the server's memory at rest."""
    return {"session": client.get(f"/sessions/{session}", headers=AUTH).json(), "rss": memory(served)["VmRSS"]}


def memory(server: RunningServer) -> dict[str, int]:
    """The server process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes."""
    lines = Path(f"/proc/{server.proc.pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


def send(case: Case, served: RunningServer, client: httpx.Client, session: str) -> tuple[int, bytes]:
    """(status, body); 0 when the server closed the connection without an answer. A timeout raises."""
    if case.raw is not None:
        host, port = served.url.removeprefix("http://").split(":")
        return send_raw(host, int(port), case.raw(), case.half_close, TIME_BOUND_S)
    request = case.request()
    headers = (AUTH if case.auth else {}) | request.pop("headers", {})
    data = request.get("data")
    if data and "session_id" in data:
        request["data"] = data | {"session_id": data["session_id"].replace(SESSION, session)}
    try:
        r = client.request(case.method, case.path.replace(SESSION, session), headers=headers, **request)
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
        return 0, b""  # closed on us (a framing the server refuses to read)
    return r.status_code, r.content


def named(body: bytes) -> dict[str, Any] | None:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return error if isinstance(error, dict) and {"type", "message", "param"} <= error.keys() else None


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case(
    case: Case, served: RunningServer, client: httpx.Client, session: str, before: dict[str, Any]
) -> None:
    started = time.monotonic()
    try:
        status, body = send(case, served, client, session)
    except (httpx.TimeoutException, TimeoutError):
        results.append({"name": case.name, "kind": case.kind, "status": "hang", "seconds": TIME_BOUND_S})
        pytest.fail(f"no answer within {TIME_BOUND_S} s: a hang")
    except Exception:
        results.append({"name": case.name, "kind": case.kind, "status": "unsent", "seconds": 0})
        raise  # the case itself is broken (the client refused to send it): fix the case
    seconds = time.monotonic() - started
    error = named(body)
    results.append(
        {"name": case.name, "kind": case.kind, "status": status, "seconds": round(seconds, 3), "error": error}
    )
    assert status < 500 or status == 503, body[:500]
    assert status in case.accept, (status, body[:500])
    if status >= 400 and case.names is not None:
        assert error is not None, body[:500]
        assert error["param"] == case.names or case.names in error["message"], error


def test_after_the_corpus_the_server_is_ready_bounded_and_the_session_unchanged(
    served: RunningServer, client: httpx.Client, session: str, before: dict[str, Any]
) -> None:
    assert len(results) == len(CASES) >= 100
    assert client.get("/readyz").status_code == 200
    assert client.get(f"/sessions/{session}", headers=AUTH).json() == before["session"]
    after = memory(served)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "cases": results,
                "rss_before": before["rss"],
                "rss_after": after["VmRSS"],
                "rss_peak": after["VmHWM"],
                "rss_growth_bound": RSS_GROWTH_BOUND,
                "time_bound_s": TIME_BOUND_S,
            },
            indent=1,
        )
    )
    assert after["VmRSS"] - before["rss"] <= RSS_GROWTH_BOUND, after
