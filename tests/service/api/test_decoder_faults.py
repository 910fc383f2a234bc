"""At the HTTP edge, with a fake encoder at the seam: a file whose decode worker died is a 503 naming
that file (with Retry-After), and a pool replacing a worker makes /readyz 503 on both apps."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch

from encoders.errors import DecoderLost, DecodersRebuilding
from encoders.media import MediaInput, SoftPrompt
from service.api.app import create_app
from service.api.encoder_app import create_encoder_app
from service.settings import Settings
from tests.fakes import FixedEncoder, ScriptedEngine, chat_service, resources
from tests.media import picture

pytestmark = pytest.mark.unit


class RebuildingEncoder(FixedEncoder):
    """A pool whose decode worker died on image[0] and is being replaced."""

    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        raise DecoderLost(items[0].field, "the decode worker stopped while decoding this file; retry")

    async def soft_prompts(self, items: list[MediaInput]) -> list[SoftPrompt]:
        raise DecoderLost(items[0].field, "the decode worker stopped while decoding this file; retry")

    async def check_health(self) -> None:
        raise DecodersRebuilding("1 decode worker(s) starting or being replaced")


def asgi(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)  # type: ignore[arg-type]


async def test_the_api_names_the_file_and_is_not_ready(demo_bundle: Path) -> None:
    chat = chat_service(demo_bundle, ScriptedEngine([[5]]), RebuildingEncoder())
    async with asgi(create_app(Settings(), resources(chat))) as c:
        r = await c.post("/chat", data={"message": "What is it?"}, files=[("image", ("a.png", picture(1, (64, 48))))])
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        assert r.json()["error"]["param"] == "image"
        assert r.json()["error"]["message"].startswith("image[0]: the decode worker stopped")
        ready = await c.get("/readyz")
    assert ready.status_code == 503 and "being replaced" in ready.json()["error"]["message"]


async def test_the_encoder_service_is_not_ready_either() -> None:
    async with asgi(create_encoder_app(Settings(), RebuildingEncoder())) as c:
        r = await c.post("/v1/encode", files=[("image", ("image[0]", b"x"))])
        assert r.status_code == 503 and r.json()["error"]["param"] == "image"
        ready = await c.get("/readyz")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
