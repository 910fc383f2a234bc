"""The encoder service's HTTP edge in-process (with the fake encoder at the seam), and how its
client turns the service's errors back into the exceptions they were."""

from __future__ import annotations

import httpx
import pytest
import torch

from encoders.errors import InvalidMedia, PoolFull
from encoders.media import tensor_from_base64
from service.api.encoder_app import create_encoder_app
from service.errors import EncoderUnavailable
from service.remote_encoder import _error
from service.settings import Settings
from tests.fakes import FixedEncoder

pytestmark = pytest.mark.unit


def client(encoder: FixedEncoder) -> httpx.AsyncClient:
    app = create_encoder_app(Settings(), encoder)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_files_are_encoded_in_the_order_sent_under_their_filenames() -> None:
    encoder = FixedEncoder()
    files = [("audio", ("audio[0]", b"a")), ("image", ("messages[0].content[1]", b"b"))]
    async with client(encoder) as c:
        r = await c.post("/v1/encode", files=files)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [(d["modality"], d["field"]) for d in data] == [("audio", "audio[0]"), ("image", "messages[0].content[1]")]
    assert [(m.modality, m.field, m.data) for m in encoder.encoded] == [
        ("audio", "audio[0]", b"a"),
        ("image", "messages[0].content[1]", b"b"),
    ]
    assert data[1]["shape"] == [1, 8]  # soft prompts unless asked otherwise
    assert torch.equal(tensor_from_base64(data[1]["data"], (1, 8)), torch.full((1, 8), 0.02))


async def test_embeddings_on_request() -> None:
    async with client(FixedEncoder()) as c:
        r = await c.post("/v1/encode", params={"output": "embedding"}, files=[("image", ("image[0]", b"b"))])
    assert r.status_code == 200, r.text
    (item,) = r.json()["data"]
    assert item["shape"] == [1024]
    assert torch.equal(tensor_from_base64(item["data"]), torch.full((1024,), 0.01))


async def test_a_part_that_is_not_a_modality_is_400() -> None:
    async with client(FixedEncoder()) as c:
        r = await c.post("/v1/encode", files=[("photo", ("p.png", b"x"))])
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def envelope(status: int, kind: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"type": kind, "message": message, "param": None}})


def test_the_client_raises_what_the_service_raised() -> None:
    media = _error(envelope(422, "invalid_media_error", "messages[0].content[1]: the image is corrupt"))
    assert isinstance(media, InvalidMedia) and media.field == "messages[0].content[1]"
    assert str(media) == "messages[0].content[1]: the image is corrupt"
    assert isinstance(_error(envelope(503, "overloaded_error", "at capacity")), PoolFull)
    assert isinstance(_error(envelope(500, "internal_error", "internal server error")), EncoderUnavailable)
    assert isinstance(_error(httpx.Response(502, text="bad gateway")), EncoderUnavailable)
