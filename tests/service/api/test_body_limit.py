"""The total body cap acts while the body streams in: declared too large -> refused unread; a chunked body
that grows past it -> 413 as soon as it does, the rest never read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.settings import Settings
from tests.fakes import ScriptedEngine, chat_service, resources

pytestmark = pytest.mark.unit
LIMIT = 10_000


def client(demo_bundle: Path) -> httpx.AsyncClient:
    # Auth off (no keys): the body reaches the route, which reads it (and the cap refuses it).
    app = create_app(Settings(max_body_bytes=LIMIT), resources(chat_service(demo_bundle, ScriptedEngine([[5]]))))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_declared_length_over_the_cap_is_refused_unread(demo_bundle: Path) -> None:
    async with client(demo_bundle) as c:
        r = await c.post(
            "/chat", content=b"x" * (LIMIT + 1), headers={"content-type": "multipart/form-data; boundary=b"}
        )
    assert r.status_code == 413
    assert r.json()["error"] == {
        "type": "payload_too_large_error",
        "message": f"the request body is larger than the limit of {LIMIT} bytes",
        "param": None,
    }


async def test_a_streamed_body_is_cut_off_once_it_passes_the_cap(demo_bundle: Path) -> None:
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        yield b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(100):
            pulled += 1
            yield b"\0" * 1000

    async with client(demo_bundle) as c:
        r = await c.post("/chat", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large_error"
    assert pulled <= LIMIT // 1000 + 1  # stopped at the cap: 90 of the 100 chunks were never read


async def test_a_body_under_the_cap_passes_through(demo_bundle: Path) -> None:
    async with client(demo_bundle) as c:
        r = await c.get("/healthz")
    assert r.status_code == 200
