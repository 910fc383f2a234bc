"""Session affinity through vllm-router: two stock vLLM servers behind the router (consistent
hashing on the `x-session-id` the API sends with every turn), one API replica. Every turn of a
session reaches the same engine, the one whose prefix cache holds the conversation so far, and
different sessions spread over both engines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.server import Router, Server, stock_engine, vllm_router
from tests.conftest import AUTH, RunningServer, running_server
from tests.media import valid

pytestmark = pytest.mark.e2e

SESSIONS = 10  # sessions land on engines by the hash of their random ids: all 10 on one of two is a 1/512 chance


@dataclass
class TwoEngines:
    engines: list[Server]
    router: Router
    api: RunningServer


@pytest.fixture(scope="module")
def two_engines(demo_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoEngines]:
    logs = tmp_path_factory.mktemp("affinity")
    with ExitStack() as stack:
        engines = [stack.enter_context(stock_engine(demo_bundle, logs)) for _ in range(2)]
        router = stack.enter_context(vllm_router([e.url for e in engines], logs))
        env = {"PANDASERVE_ENGINE_URL": router.url}  # ImageBind in the replica: only the engine tier is under test
        api = stack.enter_context(running_server(demo_bundle, redis_url, tmp_path_factory.mktemp("api"), env))
        yield TwoEngines(engines, router, api)


def finished(engine: Server) -> float:
    """Requests the engine has finished so far (vLLM's own counter, every finish reason)."""
    lines = httpx.get(f"{engine.url}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("vllm:request_success_total"))


def test_every_turn_of_a_session_reaches_the_same_engine(two_engines: TwoEngines) -> None:
    engines = two_engines.engines
    placements = []
    with httpx.Client(base_url=two_engines.api.url, headers=AUTH, timeout=120) as client:
        for i in range(SESSIONS):
            before = [finished(e) for e in engines]
            form = {"message": "What is in this?", "max_tokens": "4", "temperature": "0"}
            r = client.post("/chat", data=form, files=[("image", ("i", valid("image", 70 + i)))])
            assert r.status_code == 200, r.text
            for message in ("And the colour?", "Where is it?"):
                form = {"message": message, "max_tokens": "4", "session_id": r.json()["session_id"]}
                r = client.post("/chat", data=form)
                assert r.status_code == 200, r.text
            placements.append(tuple(finished(e) - b for e, b in zip(engines, before, strict=True)))
    assert all(sorted(p) == [0, 3] for p in placements), placements  # all three turns on one engine
    assert {p.index(3) for p in placements} == {0, 1}, placements  # and the sessions spread over both
