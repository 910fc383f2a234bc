"""Admission and shutdown on a server of their own: per-key rate limits (429 + Retry-After) and the
graceful drain on SIGTERM (readyz 503 at once, new work 503, the in-flight stream finishes)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, OTHER_KEY, RunningServer, running_server
from tests.media import picture

pytestmark = pytest.mark.e2e

RPM = 5


@pytest.fixture(scope="module")
def limited(demo_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"PANDASERVE_RATE_LIMIT_RPM": str(RPM), "PANDASERVE_DRAIN_TIMEOUT_S": "60"}
    with running_server(demo_bundle, redis_url, tmp_path_factory.mktemp("limited"), env) as running:
        yield running


def test_rate_limit_is_429_with_retry_after(limited: RunningServer) -> None:
    with httpx.Client(base_url=limited.url, headers=AUTH, timeout=30) as client:
        statuses = [client.get("/sessions/sess_" + "0" * 32).status_code for _ in range(RPM)]
        assert statuses == [404] * RPM  # admitted (and not found)
        r = client.get("/sessions/sess_" + "0" * 32)
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert 1 <= int(r.headers["retry-after"]) <= 60 // RPM + 1
        assert client.get("/readyz").status_code == 200  # probes are not limited


def test_sigterm_drains(limited: RunningServer) -> None:
    other = {"Authorization": f"Bearer {OTHER_KEY}"}  # a bucket of its own
    form = {"message": "Tell me everything.", "max_tokens": "120", "stream": "true"}
    files = [("image", ("a.png", picture(3, (64, 64))))]
    with httpx.Client(base_url=limited.url, headers=other, timeout=120) as client:
        with client.stream("POST", "/chat", data=form, files=files) as stream:
            lines = stream.iter_lines()
            assert next(line for line in lines if line.startswith("event: ")) == "event: delta"
            limited.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "shutting down" in ready.json()["error"]["message"]
            refused = client.post("/chat", data={"message": "new"}, files=files)
            assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
            rest = [line for line in lines if line.startswith("data: ")]
        done = json.loads(rest[-1].removeprefix("data: "))
        assert done["finish_reason"] in ("stop", "length") and done["usage"]["completion_tokens"] > 0
    assert limited.proc.wait(timeout=60) is not None  # and then it stops
