"""The HTTP edge in-process, on the real chat core with fakes at the two seams: the front door acts
before any body is read, and /chat and /v1 carry a turn end to end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sentencepiece as spm

from service.api.app import create_app
from service.settings import Settings
from tests.fakes import ScriptedEngine, chat_service, resources

pytestmark = pytest.mark.unit
KEY = "k1"
BODY = 50 * 2**20  # what the request claims to upload


@pytest.fixture(scope="module")
def sp(demo_bundle: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(demo_bundle / "llm" / "tokenizer.model"))


def client(demo_bundle: Path, engine: ScriptedEngine, rpm: int = 600) -> httpx.AsyncClient:
    app = create_app(Settings(), resources(chat_service(demo_bundle, engine), keys=[KEY], rpm=rpm))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=30)


class Upload:
    """A 50 MiB multipart body, produced only as the server reads it."""

    def __init__(self) -> None:
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        head = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        self.pulled += len(head)
        yield head
        for _ in range(BODY // 2**16):
            self.pulled += 2**16
            yield b"\0" * 2**16


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
async def test_a_bad_key_is_refused_before_the_body_is_read(demo_bundle: Path, headers: dict[str, str]) -> None:
    upload = Upload()
    headers |= {"content-type": "multipart/form-data; boundary=b", "content-length": str(BODY)}
    async with client(demo_bundle, ScriptedEngine([[5]])) as c:
        r = await c.post("/chat", content=upload, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert upload.pulled <= 2**16 + 100  # at most the first chunk httpx had ready: not the 50 MiB


async def test_over_the_rate_is_refused_before_the_body_is_read(demo_bundle: Path) -> None:
    async with client(demo_bundle, ScriptedEngine([[5]]), rpm=1) as c:
        auth = {"Authorization": f"Bearer {KEY}"}
        assert (await c.get("/sessions/sess_" + "0" * 32, headers=auth)).status_code == 404
        upload = Upload()
        headers = auth | {"content-type": "multipart/form-data; boundary=b", "content-length": str(BODY)}
        r = await c.post("/chat", content=upload, headers=headers)
    assert r.status_code == 429 and "retry-after" in r.headers
    assert upload.pulled <= 2**16 + 100


async def test_chat_and_its_stream_over_the_real_core(demo_bundle: Path, sp: spm.SentencePieceProcessor) -> None:
    reply = sp.encode("A red square.")
    chunks = [[t] for t in reply] + [[sp.piece_to_id("<0x0A>")], [sp.piece_to_id("##")]]
    auth = {"Authorization": f"Bearer {KEY}"}
    files = {"image": ("a.png", b"any bytes: the encoder is a fake")}
    async with client(demo_bundle, ScriptedEngine(chunks)) as c:
        r = await c.post("/chat", data={"message": "What is it?"}, files=files, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["reply"], body["finish_reason"]) == ("A red square.", "stop")
        sid = body["session_id"]
        form = {"message": "Again?", "session_id": sid, "stream": "true", "return_token_ids": "true"}
        r = await c.post("/chat", data=form, headers=auth)
        events = [line for line in r.text.splitlines() if line.startswith("data: ")]
        deltas = [json.loads(e[6:]) for e in events[:-1]]
        done = json.loads(events[-1][6:])
        assert "".join(d["text"] for d in deltas) == done["reply"] == "A red square."
        assert sum((d["token_ids"] for d in deltas), []) == done["token_ids"] == reply
        session = (await c.get(f"/sessions/{sid}", headers=auth)).json()
        assert [t["message"] for t in session["turns"]] == ["What is it?", "Again?"]


async def test_chat_names_the_model_or_is_told_it_is_not_served(demo_bundle: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    files = {"image": ("a.png", b"any bytes: the encoder is a fake")}
    engine = ScriptedEngine([[5], [2]])
    async with client(demo_bundle, engine) as c:
        other = await c.post("/chat", data={"message": "Hi", "model": "other"}, files=files, headers=auth)
        served = await c.post("/chat", data={"message": "Hi", "model": "demo"}, files=files, headers=auth)
    assert other.status_code == 404 and other.json()["error"]["param"] == "model"
    assert "this server serves 'demo'" in other.json()["error"]["message"]
    assert served.status_code == 200, served.text
    assert len(engine.prompts) == 1  # the refused turn never reached the engine


async def test_v1_chat_completions_over_the_real_core(demo_bundle: Path, sp: spm.SentencePieceProcessor) -> None:
    chunks = [[t] for t in sp.encode("Two blue circles.")] + [[2]]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
    body = {"model": "demo", "messages": [{"role": "user", "content": [image, {"type": "text", "text": "What?"}]}]}
    async with client(demo_bundle, ScriptedEngine(chunks)) as c:
        r = await c.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("Two blue circles.", "stop")


# Numbers the engine would fail on (finding of issue 14: 500s or dropped connections).
OUT_OF_RANGE = [
    ("temperature", "3"),
    ("temperature", "inf"),
    ("temperature", "nan"),
    ("top_p", "0"),
    ("top_p", "nan"),
    ("top_k", "-2"),
    ("top_k", str(2**64)),
    ("top_k", "100000"),  # beyond the vocabulary
    ("seed", str(2**63)),
    ("seed", str(-(2**63) - 1)),
    ("max_tokens", str(2**64)),
]


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
async def test_out_of_range_sampling_numbers_are_the_callers_error(demo_bundle: Path, field: str, value: str) -> None:
    engine = ScriptedEngine([[5], [2]])
    auth = {"Authorization": f"Bearer {KEY}"}
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
    v1 = {"model": "demo", "messages": [{"role": "user", "content": [image, {"type": "text", "text": "What?"}]}]}
    number = json.loads(value) if value not in ("inf", "nan") else float(value)
    async with client(demo_bundle, engine) as c:
        form = await c.post("/chat", data={"message": "Hi", field: value}, files={"image": ("a", b"x")}, headers=auth)
        # JSON has no inf/nan: Python's encoder writes the bare words, which the server must refuse too.
        as_json = auth | {"content-type": "application/json"}
        openai = await c.post("/v1/chat/completions", content=json.dumps(v1 | {field: number}), headers=as_json)
    for r in (form, openai):
        assert r.status_code in (400, 422), r.text
        assert r.json()["error"]["param"] == field, r.text
    assert engine.prompts == []  # nothing reached the engine


@pytest.mark.parametrize("sid", ["sess_x:lock", "sess_nope", "sess_ x", "sess_" + "0" * 31 + "g", "x" * 10_000])
async def test_a_malformed_session_id_is_422_on_every_route(demo_bundle: Path, sid: str) -> None:
    """Before, ids went into store keys as sent: `<id>:lock` read the lock's key (500) and stretched it."""
    auth = {"Authorization": f"Bearer {KEY}"}
    async with client(demo_bundle, ScriptedEngine([[5], [2]])) as c:
        answers = [
            await c.get(f"/sessions/{sid}", headers=auth),
            await c.delete(f"/sessions/{sid}", headers=auth),
            await c.post("/chat", data={"message": "Hi", "session_id": sid}, headers=auth),
        ]
    for r in answers:
        assert r.status_code == 422, r.text
        assert r.json()["error"]["param"] == "session_id"


async def test_session_metadata_is_bounded(demo_bundle: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    async with client(demo_bundle, ScriptedEngine([[5]])) as c:
        fine = await c.post("/sessions", json={"metadata": {"k" * 64: "v" * 512}}, headers=auth)
        assert fine.status_code == 201, fine.text
        for metadata in ({"user": "v" * 2**21}, {"k" * 65: "v"}, {"": "v"}, {f"k{i}": "v" for i in range(33)}):
            r = await c.post("/sessions", json={"metadata": metadata}, headers=auth)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["param"].startswith("metadata")


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}] * 128
        + [{"role": "user", "content": "x"}],
        [{"role": "user", "content": "a" * 16_000}, {"role": "assistant", "content": "b" * 16_000}] * 4
        + [{"role": "user", "content": "c" * 16_000}],
    ],
    ids=["257 messages", "144,000 characters"],
)
async def test_a_v1_conversation_is_bounded_before_anything_is_tokenized(
    demo_bundle: Path, messages: list[dict[str, str]]
) -> None:
    engine = ScriptedEngine([[5], [2]])
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
    messages[-1] = {"role": "user", "content": [image, {"type": "text", "text": "What?"}]}
    async with client(demo_bundle, engine) as c:
        r = await c.post(
            "/v1/chat/completions",
            json={"model": "demo", "messages": messages},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages"
    assert engine.prompts == []


async def test_failed_authentications_are_limited_per_address_before_the_key_is_checked(demo_bundle: Path) -> None:
    """Before, keys could be guessed at the full request rate."""
    async with client(demo_bundle, ScriptedEngine([[5]])) as c:
        statuses = [
            (await c.get("/sessions/sess_" + "0" * 32, headers={"Authorization": f"Bearer guess{i}"})).status_code
            for i in range(20)
        ]
        assert statuses == [401] * 20
        right_key = await c.get("/sessions/sess_" + "0" * 32, headers={"Authorization": f"Bearer {KEY}"})
    # Even the right key is refused now: a guesser learns nothing more from this address this minute.
    assert right_key.status_code == 429 and "retry-after" in right_key.headers


@pytest.mark.parametrize("public", [True, False])
async def test_metrics_and_docs_can_be_kept_for_key_holders(demo_bundle: Path, public: bool) -> None:
    settings = Settings(public_metrics_and_docs=public)
    app = create_app(settings, resources(chat_service(demo_bundle, ScriptedEngine([[5]])), keys=[KEY]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        anonymous = [(await c.get(path)).status_code for path in ("/metrics", "/openapi.json", "/docs")]
        keyed = (await c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})).status_code
        probes = [(await c.get(path)).status_code for path in ("/healthz", "/readyz")]
    assert anonymous == ([200] * 3 if public else [401] * 3)
    assert keyed == 200 and probes == [200, 200]


async def asgi_post(app: Any, path: str, request: httpx.Request, gone: asyncio.Event) -> list[dict[str, Any]]:
    """POST `request` to the ASGI app, as a client that disconnects once `gone` is set."""
    body = request.read()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    headers = [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    return messages


@pytest.mark.parametrize("route", ["/chat", "/v1/chat/completions"])
async def test_a_non_streamed_turn_whose_client_goes_is_aborted_and_not_committed(
    demo_bundle: Path, sp: spm.SentencePieceProcessor, route: str
) -> None:
    """Before, it generated to the end and committed a turn nobody received."""
    gate = asyncio.Event()  # the engine stops after two tokens until set: the client leaves meanwhile
    engine = ScriptedEngine([[t] for t in sp.encode("one two three four")], gate=gate)
    chat = chat_service(demo_bundle, engine)
    app = create_app(Settings(), resources(chat, keys=[KEY]))
    sid = (await chat.create_session(chat_tenant(app), {})).session_id
    auth = {"Authorization": f"Bearer {KEY}"}
    if route == "/chat":
        form = {"message": "Hi", "session_id": sid}
        request = httpx.Request("POST", "http://test/chat", data=form, files={"image": ("a", b"x")}, headers=auth)
    else:
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
        body = {"model": "demo", "messages": [{"role": "user", "content": [image, {"type": "text", "text": "Hi"}]}]}
        request = httpx.Request("POST", "http://test/v1/chat/completions", json=body, headers=auth)
    gone = asyncio.Event()
    answer = asyncio.create_task(asgi_post(app, route, request, gone))
    await asyncio.sleep(0.5)  # the turn is generating, held at the gate
    gone.set()
    messages = await asyncio.wait_for(answer, timeout=10)
    assert messages[0]["status"] == 499
    assert len(engine.aborted) == 1  # the engine's request was aborted
    assert (await chat.get_session(chat_tenant(app), sid)).turns == []  # nothing committed


def chat_tenant(app: Any) -> str | None:
    return app.state.resources.keys.tenant(f"Bearer {KEY}")
