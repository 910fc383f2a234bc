"""Redis stops mid-run: turns get a clear 503 (never a 500) and readiness fails; when Redis is back the
service recovers without a restart, and no committed turn is lost."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, OwnRedis, RunningServer, running_server
from tests.media import picture

pytestmark = pytest.mark.e2e

IMAGE = [("image", ("a.png", picture(2, (64, 64))))]


@pytest.fixture(scope="module")
def served(demo_bundle: Path, own_redis: OwnRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(demo_bundle, own_redis.url, tmp_path_factory.mktemp("outage")) as running:
        yield running


def test_redis_outage_is_503_and_the_service_recovers(served: RunningServer, own_redis: OwnRedis) -> None:
    with httpx.Client(base_url=served.url, headers=AUTH, timeout=120) as client:
        first = client.post("/chat", data={"message": "Before", "max_tokens": "4"}, files=IMAGE)
        assert first.status_code == 200
        sid = first.json()["session_id"]

        own_redis.stop()
        during = client.post("/chat", data={"message": "During", "max_tokens": "4", "session_id": sid})
        assert during.status_code == 503, during.text
        assert "session store (Redis) is unavailable" in during.json()["error"]["message"]
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200  # alive, just not ready

        own_redis.start()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/readyz").status_code == 200  # no restart needed
        after = client.post("/chat", data={"message": "After", "max_tokens": "4", "session_id": sid})
        assert after.status_code == 200, after.text
        turns = client.get(f"/sessions/{sid}").json()["turns"]
        assert [t["message"] for t in turns] == ["Before", "After"]  # nothing committed was lost
