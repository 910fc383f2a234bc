"""The OpenAI-compatible API: the official SDK against the real server, equivalence with /chat,
errors in our envelope, and remote media fetched from a local HTTP server (no external network)."""

from __future__ import annotations

import base64
import contextlib
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from encoders.errors import MediaTooLarge
from service.api import remote_media
from service.api.v1_messages import to_turn
from service.api.v1_schemas import ChatCompletionRequest
from service.errors import BadRequest
from service.settings import Settings
from tests.conftest import API_KEY, AUTH
from tests.media import picture, valid

pytestmark = pytest.mark.e2e

MIME = {
    "image": "image/png",
    "video": "video/mp4",
    "thermal": "image/png",
    "depth": "image/png",
    "imu": "application/octet-stream",
}


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image_part(seed: int = 0, data: bytes | None = None) -> dict[str, Any]:
    url = data_url(data or picture(seed, (320, 240)), "image/png")
    return {"type": "image_url", "image_url": {"url": url}}


def media_part(modality: str, seed: int) -> dict[str, Any]:
    data = valid(modality, seed)
    if modality == "audio":
        return {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
    kind = "image_url" if modality == "image" else f"{modality}_url"
    return {"type": kind, kind: {"url": data_url(data, MIME[modality])}}


@pytest.fixture(scope="module")
def sdk(server: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server + "/v1", api_key=API_KEY, max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers=AUTH, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def model(demo_bundle: Path) -> str:
    return demo_bundle.name  # no served_model_name is set: the bundle directory's name


def body(model: str, messages: list[dict], **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": messages, "temperature": 0, "max_tokens": 8} | extra


def ask(content: list[dict] | str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": content}]


# --- the SDK against the real server -------------------------------------------------------------


def test_models_via_the_sdk(sdk: openai.OpenAI, model: str, http: httpx.Client) -> None:
    models = sdk.models.list().data
    assert [m.id for m in models] == [model]
    assert models[0].owned_by == "pandaserve" and models[0].created > 0
    assert sdk.models.retrieve(model).id == model
    r = http.get("/v1/models/no-such-model")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_sdk_streamed_and_not_streamed_agree(sdk: openai.OpenAI, model: str) -> None:
    messages: Any = ask([{"type": "text", "text": "What is in this image?"}, image_part(1)])
    kwargs: Any = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 12}
    whole = sdk.chat.completions.create(**kwargs)
    assert whole.object == "chat.completion" and whole.id.startswith("chatcmpl-") and whole.model == model
    choice = whole.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert choice.logprobs is None
    assert whole.usage is not None and whole.usage.prompt_tokens > 0
    assert 0 < whole.usage.completion_tokens <= 12
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(sdk.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [choice.finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_same_reply_as_chat(sdk: openai.OpenAI, model: str, http: httpx.Client) -> None:
    image = picture(2, (320, 240))
    questions = ["What is in this image?", "What colour is the box?"]
    form = {"temperature": "0", "max_tokens": "12", "return_token_ids": "true"}
    first = http.post("/chat", data=form | {"message": questions[0]}, files=[("image", ("a.png", image))])
    assert first.status_code == 200, first.text
    session = {"session_id": first.json()["session_id"]}
    second = http.post("/chat", data=form | {"message": questions[1]} | session)
    assert second.status_code == 200, second.text

    messages: Any = [
        {"role": "system", "content": "ignored: PandaGPT has no system prompt"},
        {"role": "user", "content": [image_part(data=image), {"type": "text", "text": questions[0]}]},
        {"role": "assistant", "content": first.json()["reply"]},
        {"role": "user", "content": questions[1]},
    ]
    out = sdk.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=12)
    assert out.choices[0].message.content == second.json()["reply"]
    assert out.choices[0].finish_reason == second.json()["finish_reason"]


@pytest.mark.parametrize("modality", ["audio", "video", "thermal", "depth", "imu"])
def test_every_modality_part(http: httpx.Client, model: str, modality: str) -> None:
    r = http.post(
        "/v1/chat/completions", json=body(model, ask([media_part(modality, 3), {"type": "text", "text": "?"}]))
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_logprobs(sdk: openai.OpenAI, model: str) -> None:
    messages: Any = ask([image_part(4), {"type": "text", "text": "Describe it."}])
    kwargs: Any = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 8}
    out = sdk.chat.completions.create(**kwargs, logprobs=True, top_logprobs=2)
    assert out.choices[0].logprobs is not None
    content = out.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 and t.bytes for t in content)
    # Greedy: each token is its position's most likely one.
    assert all(t.top_logprobs[0].token == t.token for t in content)
    streamed = list(sdk.chat.completions.create(**kwargs, logprobs=True, top_logprobs=2, stream=True))
    tokens = [
        t.token for c in streamed if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert tokens == [t.token for t in content]


def test_stop_strings_cut_the_reply(sdk: openai.OpenAI, model: str) -> None:
    messages: Any = ask([image_part(5), {"type": "text", "text": "Tell me about it."}])
    kwargs: Any = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 16}
    full = sdk.chat.completions.create(**kwargs).choices[0].message.content or ""
    assert len(full.strip()) >= 4, full
    # Two letters from the second half (the demo model's text is random pieces, some of them bytes).
    mid = next((k for k in range(len(full) // 2, len(full) - 1) if full[k : k + 2].isalpha()), len(full) // 2)
    stop = full[mid : mid + 2]
    cut = sdk.chat.completions.create(**kwargs, stop=[stop, "never-appears"]).choices[0]
    assert cut.message.content == full[: full.index(stop)]
    assert cut.finish_reason == "stop"


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"model": "gpt-4o"}, 404, "model"),
        ({"n": 2}, 400, "n"),
        ({"top_logprobs": 2}, 400, "top_logprobs"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 422, "messages"),  # no media at all
        ({"messages": ask([image_part()]) + [{"role": "assistant", "content": "x"}]}, 400, "messages"),
        ({"messages": ask([image_part()]) + ask("again")}, 400, "messages[1]"),
        ({"messages": [{"role": "assistant", "content": "x"}] + ask([image_part()])}, 400, "messages[0]"),
    ],
)
def test_request_errors(http: httpx.Client, model: str, change: dict, status: int, param: str) -> None:
    r = http.post("/v1/chat/completions", json=body(model, ask([image_part()])) | change)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("part", "status", "text"),
    [
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%not-base64"}}, 400, "base64"),
        ({"type": "input_audio", "input_audio": {"data": "@@@@", "format": "wav"}}, 400, "base64"),
        ({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}, 415, ""),  # b"hello"
        ({"type": "image_url", "image_url": {"url": data_url(picture(0, (64, 64)), "text/html")}}, 415, "text/html"),
        ({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, 400, "data: URL"),
        (
            {"type": "image_url", "image_url": {"url": "http://example.com/a.png"}},
            400,
            "remote media URLs are disabled",
        ),
        ({"type": "image_url", "image_url": {"url": data_url(bytes(4 * 2**20 + 1), "image/png")}}, 413, "limit"),
    ],
)
def test_media_errors_name_the_part(http: httpx.Client, model: str, part: dict, status: int, text: str) -> None:
    messages = ask([{"type": "text", "text": "What is it?"}, part])
    r = http.post("/v1/chat/completions", json=body(model, messages))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == "messages[0].content[1]"
    assert error["message"].startswith("messages[0].content[1]: ") and text in error["message"]


def test_too_many_files_of_one_modality(http: httpx.Client, model: str) -> None:
    parts = [image_part(i) for i in range(5)]  # the default limit is 4 per modality
    r = http.post("/v1/chat/completions", json=body(model, ask(parts)))
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content[4]"


def test_api_key_required(server: str, model: str) -> None:
    r = httpx.post(f"{server}/v1/chat/completions", json=body(model, ask([image_part()])), timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server}/v1/models", timeout=30).status_code == 401


# --- messages -> turn, and remote media, in-process ----------------------------------------------

PNG = picture(7, (64, 48))
# 8 MiB of zeros in about 8 KiB: sent compressed although the client asked for `identity`.
GZIP_BOMB = gzip.compress(bytes(8 * 2**20))


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802  (http.server's name)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/image.png")
            self.end_headers()
            return
        if self.path == "/slow":
            time.sleep(2)
        if self.path == "/gzip-bomb":
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(GZIP_BOMB)))  # small: only the decompressed size tells
            self.end_headers()
            with contextlib.suppress(ConnectionError):  # the client stops reading at the cap
                self.wfile.write(GZIP_BOMB)
            return
        body = {"/big": bytes(2048), "/big-unsized": bytes(2048)}.get(self.path, PNG)
        if self.path not in ("/image.png", "/big", "/big-unsized", "/slow"):
            self.send_error(404)
            return
        self.send_response(200)
        if self.path != "/big-unsized":  # no length: the body ends when the connection closes
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # the client gave up (the timeout test)
            self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def media_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


async def fetch(url: str, hosts: str | None = None, timeout_s: float = 5, max_bytes: int = 1024) -> bytes:
    """`url` fetched with `hosts` allowed (default: its own host and port)."""
    allowed = remote_media.allowed_hosts(httpx.URL(url).netloc.decode() if hosts is None else hosts)
    return await remote_media.fetch(url, hosts=allowed, timeout_s=timeout_s, max_bytes=max_bytes, field="f")


async def test_remote_media_from_an_allowed_host(media_server: str) -> None:
    netloc = httpx.URL(media_server).netloc.decode()
    assert await fetch(f"{media_server}/image.png", hosts=f"example.org, {netloc}", max_bytes=len(PNG)) == PNG


@pytest.mark.parametrize(
    ("path", "hosts", "problem"),
    [
        ("/image.png", "", "disabled"),
        ("/image.png", "localhost", "allow-list"),
        ("/image.png", "127.0.0.1", "allow-list"),  # the host, but only on port 80: not any port
        # Every failure past the allow-list reads the same: nothing about the network behind it.
        ("/redirect", None, "the URL could not be fetched"),
        ("/missing", None, "the URL could not be fetched"),
    ],
)
async def test_remote_media_refused(media_server: str, path: str, hosts: str | None, problem: str) -> None:
    with pytest.raises(BadRequest, match=problem) as info:
        await fetch(media_server + path, hosts=hosts, max_bytes=len(PNG))
    assert info.value.param == "f"


async def test_remote_media_open_and_closed_ports_read_the_same(media_server: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    answers = []
    for url in (f"http://127.0.0.1:{closed}/image.png", f"{media_server}/missing"):
        with pytest.raises(BadRequest) as info:
            await fetch(url)
        answers.append(str(info.value))
    assert answers[0] == answers[1] == "f: the URL could not be fetched"


async def test_an_allowed_name_that_resolves_inside_is_not_fetched(media_server: str) -> None:
    """Before, an allow-listed name resolving to loopback was fetched (a way into the internal network)."""
    port = httpx.URL(media_server).port
    with pytest.raises(BadRequest, match="could not be fetched"):
        await fetch(f"http://localhost:{port}/image.png", hosts=f"localhost:{port}", max_bytes=len(PNG))


async def test_remote_media_other_schemes_refused() -> None:
    with pytest.raises(BadRequest, match="only http and https"):
        await fetch("ftp://127.0.0.1/image.png", hosts="127.0.0.1")


@pytest.mark.parametrize("path", ["/big", "/big-unsized"])
async def test_remote_media_over_the_size_cap(media_server: str, path: str) -> None:
    with pytest.raises(MediaTooLarge):
        await fetch(media_server + path, max_bytes=2047)
    assert len(await fetch(media_server + path, max_bytes=2048)) == 2048


async def test_a_compressed_body_is_capped_after_decompression(media_server: str) -> None:
    with pytest.raises(MediaTooLarge):
        await fetch(f"{media_server}/gzip-bomb", max_bytes=2**20)


async def test_remote_media_timeout(media_server: str) -> None:
    with pytest.raises(BadRequest, match="could not be fetched"):
        await fetch(f"{media_server}/slow", timeout_s=0.3, max_bytes=len(PNG))


async def test_messages_to_turn(media_server: str) -> None:
    settings = Settings(remote_media_hosts=httpx.URL(media_server).netloc.decode())
    request = ChatCompletionRequest.model_validate(
        body(
            "m",
            [
                {"role": "developer", "content": "ignored"},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, image_part(), {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"{media_server}/image.png"}}]},
            ],
        )
    )
    history, message, media = await to_turn(request.messages, settings, settings.turn_limits(), None)
    assert history == [("a\nb", "c")] and message == ""
    assert [(m.modality, m.field) for m in media] == [
        ("image", "messages[1].content[1]"),
        ("image", "messages[3].content[0]"),
    ]
    assert media[1].data == PNG
