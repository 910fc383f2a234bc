"""End to end over real HTTP: uvicorn on a free port, the real vLLM engine, sessions in real Redis."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.core.session_store import KEY_PREFIX
from tests.conftest import AUTH

pytestmark = pytest.mark.e2e


def png(colour: tuple[int, int, int], size: tuple[int, int] = (256, 192)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(server: str) -> httpx.Client:
    with httpx.Client(base_url=server, timeout=120, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def raw_redis(redis_url: str) -> redis.Redis:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def chat(
    client: httpx.Client, message: str, session_id: str | None = None, images: list[bytes] = (), **form
) -> httpx.Response:
    data = {"message": message, "max_tokens": "8", **{k: str(v) for k, v in form.items()}}
    if session_id:
        data["session_id"] = session_id
    files = [("image", (f"img{i}.png", b, "image/png")) for i, b in enumerate(images)]
    return client.post("/chat", data=data, files=files or None)


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ok"}


def test_three_turn_chat_keeps_history_in_redis(client: httpx.Client, raw_redis: redis.Redis) -> None:
    first = chat(client, "What is in this picture?", images=[png((200, 30, 30))])
    assert first.status_code == 200, first.text
    body = first.json()
    sid = body["session_id"]
    assert body["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0

    replies = [body["reply"]]
    for message in ("And the colour?", "Thanks!"):
        r = chat(client, message, session_id=sid)
        assert r.status_code == 200, r.text
        assert r.json()["session_id"] == sid
        replies.append(r.json()["reply"])

    view = client.get(f"/sessions/{sid}").json()
    assert [t["message"] for t in view["turns"]] == ["What is in this picture?", "And the colour?", "Thanks!"]
    assert [t["reply"] for t in view["turns"]] == replies
    assert view["turns"][0]["media"][0]["modality"] == "image"
    assert view["turns"][0]["media"][0].keys() == {"modality", "sha256", "bytes", "sound"}  # never the vectors
    assert view["turns"][0]["media"][0]["sound"] is None and view["model"] == "demo"
    # It lives in Redis, with a TTL.
    assert int(raw_redis.hget(KEY_PREFIX + sid, "turns")) == 3
    assert raw_redis.ttl(KEY_PREFIX + sid) > 0


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 422, "truncated or corrupt"),
        (b"%PDF-1.7 not an image", 415, "not an image"),
        (b"", 422, "empty"),
    ],
)
def test_broken_image_is_4xx_and_leaves_the_session_unchanged(
    client: httpx.Client, raw_redis: redis.Redis, data: bytes, status: int, words: str
) -> None:
    sid = chat(client, "Look.", images=[png((0, 90, 200))]).json()["session_id"]
    before = raw_redis.hgetall(KEY_PREFIX + sid)

    r = chat(client, "And this one?", session_id=sid, images=[png((1, 2, 3)), data])
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == "image"
    assert error["message"].startswith("image[1]: ") and words in error["message"]
    assert raw_redis.hgetall(KEY_PREFIX + sid) == before


def test_the_image_steers_the_reply(client: httpx.Client) -> None:
    replies = {
        tuple(chat(client, "What is it?", images=[png(c)], temperature=0, return_token_ids="true").json()["token_ids"])
        for c in ((200, 30, 30), (30, 30, 200), (30, 200, 30))
    }
    assert len(replies) == 3


def test_first_turn_without_media_is_422(client: httpx.Client) -> None:
    r = chat(client, "Hello?")
    assert r.status_code == 422
    assert r.json()["error"] == {
        "type": "unprocessable_entity_error",
        "message": "the first turn of a chat needs at least one media file "
        "(image, audio, video, thermal, depth or imu)",
        "param": None,
    }


def test_unknown_session_is_404(client: httpx.Client) -> None:
    unknown = "sess_" + "0" * 32
    r = chat(client, "Hi", session_id=unknown, images=[png((5, 5, 5))])
    assert r.status_code == 404 and r.json()["error"]["param"] == "session_id"
    assert client.get(f"/sessions/{unknown}").status_code == 404


@pytest.mark.parametrize(
    ("form", "param"),
    [({"max_tokens": "0"}, "max_tokens"), ({"top_p": "1.5"}, "top_p"), ({"temperature": "-1"}, "temperature")],
)
def test_bad_parameters_name_the_field(client: httpx.Client, form: dict, param: str) -> None:
    r = chat(client, "Hi", images=[png((5, 5, 5))], **form)
    assert r.status_code == 422 and r.json()["error"]["param"] == param


def test_max_tokens_beyond_the_context_is_400(client: httpx.Client) -> None:
    r = chat(client, "Hi", images=[png((5, 5, 5))], max_tokens=10**6)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens" and "context" in r.json()["error"]["message"]


def test_metrics_parse_and_count_requests(client: httpx.Client) -> None:
    chat(client, "Count me", images=[png((9, 9, 9))])
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    requests = families["pandaserve_requests"]
    chat_200 = [s for s in requests.samples if s.labels.get("route") == "/chat" and s.labels.get("status") == "200"]
    assert chat_200 and chat_200[0].value >= 1
    assert "pandaserve_request_duration_seconds" in families
    assert families["pandaserve_generation_tokens"].samples[0].value > 0


async def test_sixteen_concurrent_staggered_lora_requests(server: str) -> None:
    """Regression guard for vLLM #51122: embeds prefills mixed with decoding rows under LoRA."""

    async def one(i: int, client: httpx.AsyncClient) -> int:
        await asyncio.sleep(0.05 * i)  # stagger, so prefills land while others decode
        images = [png((i * 15, 255 - i * 15, 100), (224 + 8 * i, 224))]
        data = {"message": "word " * (1 + i % 5), "max_tokens": str(8 + i % 7), "temperature": "0"}
        r = await client.post("/chat", data=data, files=[("image", ("a.png", images[0]))])
        return r.status_code

    async with httpx.AsyncClient(base_url=server, timeout=120, headers=AUTH) as client:
        statuses = await asyncio.gather(*(one(i, client) for i in range(16)))
        assert statuses == [200] * 16
        assert (await client.get("/readyz")).status_code == 200
