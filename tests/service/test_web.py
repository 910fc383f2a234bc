"""The web chat page in a real browser (Debian's chromium, driven by Playwright) against a live server:
the real one with the demo bundle and auth on, and an in-process one with auth off (fakes at the
engine and encoder seams). Every page runs with the network to anything but its server cut off, and
a screenshot of each state goes to build/test-output/web/ (PANDASERVE_TEST_OUTPUT moves it)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import sentencepiece as spm
import uvicorn
from playwright.sync_api import Browser, FileChooser, Page, Route, expect, sync_playwright

from benchmarks.server import free_port
from service.api.app import create_app
from service.settings import Settings
from tests.conftest import API_KEY, AUTH, REPO
from tests.fakes import FixedEncoder, ScriptedEngine, chat_service, resources
from tests.media import depth_png16, imu_npy, picture, video, wav

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"  # Debian's package (.ci/run installs it); Playwright downloads no browser
SHOTS = Path(os.environ.get("PANDASERVE_TEST_OUTPUT", REPO / "build" / "test-output")) / "web"
IMAGE = picture(11, (320, 240))
# A turn of the real engine on 2 shared cores may take a while: every wait, assertions' included.
TIMEOUT_MS = 120_000
expect.set_options(timeout=TIMEOUT_MS)
# What the page is set to send for these tests (its defaults are temperature 0, 64 tokens).
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@contextmanager
def opened(browser: Browser, base: str, shot_prefix: str, key: str | None = None) -> Iterator[Page]:
    """A fresh page (its own sessionStorage, holding `key` if given) on `base`, nothing else
    reachable; after the test: no request left for another host and the Content-Security-Policy
    refused nothing."""
    context = browser.new_context()
    if key is not None:  # as if entered before: no 401 (the shared server counts failed keys per address)
        context.add_init_script(f"sessionStorage.setItem('pandaserve.apiKey', {json.dumps(key)})")
    elsewhere: list[str] = []
    refused: list[str] = []
    origin = urlsplit(base).netloc

    def only_the_server(route: Route) -> None:
        if urlsplit(route.request.url).netloc == origin:
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_server)
    page = context.new_page()
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(base + "/")
    try:
        yield page
    finally:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SHOTS / f"{shot_prefix}-last.png", full_page=True)
        context.close()
    assert elsewhere == [] and refused == []


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


def enter_key(page: Page, key: str = API_KEY) -> None:
    expect(page.locator("#key-form")).to_be_visible()
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Use key").click()


def attach(page: Page, name: str, data: bytes, mime: str = "image/png") -> None:
    page.get_by_label("Attach files").set_input_files({"name": name, "mimeType": mime, "buffer": data})


def set_sampling(page: Page, max_tokens: int = MAX_TOKENS) -> None:
    page.locator("summary").click()
    page.get_by_label("Max tokens").fill(str(max_tokens))


def last_turn_done(page: Page) -> str:
    turn = page.locator("#log .turn").last
    expect(turn).to_have_attribute("data-state", "done")
    return turn.locator(".text").text_content() or ""


@pytest.fixture(scope="module")
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120, headers=AUTH) as c:
        yield c


# ---- the real server, auth on ------------------------------------------------------------------


def test_a_streamed_reply_equals_chat_and_the_next_question_continues_the_session(
    browser: Browser, server: str, api: httpx.Client
) -> None:
    with opened(browser, server, "chat", key=API_KEY) as page:
        expect(page.get_by_label("Model")).not_to_have_text("loading…")
        attach(page, "shapes.png", IMAGE)
        expect(page.get_by_role("img", name="Preview of shapes.png")).to_be_visible()
        expect(page.get_by_label("Kind of shapes.png")).to_have_value("image")
        shot(page, "chat-1-attached")
        set_sampling(page)
        page.get_by_label("Message").fill("What is in this image?")
        page.get_by_role("button", name="Send").click()
        reply = last_turn_done(page)
        shot(page, "chat-2-replied")
        # Each delta event is appended as it is read: a reply of several tokens is several pieces. (Whether
        # they arrive apart in time is up to the engine's pace and the browser's progress events.)
        assert page.locator("#log .turn .text").last.evaluate("e => e.childNodes.length") > 1
        assert page.evaluate("document.getElementById('upload').value") == 100  # the upload reported its end

        # The same greedy request, not streamed, gives the same reply.
        form = {"message": "What is in this image?", "temperature": "0", "max_tokens": str(MAX_TOKENS)}
        same = api.post("/chat", data=form, files=[("image", ("shapes.png", IMAGE, "image/png"))])
        assert same.status_code == 200, same.text
        assert reply == same.json()["reply"] and reply

        session = (page.locator("#session").text_content() or "").removeprefix("Session ")
        assert session.startswith("sess_")
        expect(page.locator("#attachments li")).to_have_count(0)  # the image is in the session now
        page.get_by_label("Message").fill("And the colour?")
        page.get_by_label("Message").press("Enter")
        second = last_turn_done(page)
        shot(page, "chat-3-second-turn")
        turns = api.get(f"/sessions/{session}").json()["turns"]
        assert [(t["message"], t["reply"]) for t in turns] == [
            ("What is in this image?", reply),
            ("And the colour?", second),
        ]
        assert turns[0]["media"][0]["modality"] == "image"

        page.get_by_role("button", name="New session").click()
        expect(page.locator("#session")).to_have_text("New session")
        expect(page.locator("#log .turn")).to_have_count(0)


def test_a_corrupt_file_shows_the_servers_message(browser: Browser, server: str, api: httpx.Client) -> None:
    broken = picture(12, (300, 300))[:300]
    said = api.post("/chat", data={"message": "What is it?"}, files=[("image", ("broken.png", broken, "image/png"))])
    assert said.status_code == 422
    error = said.json()["error"]
    assert error["message"].startswith("image[0]: ")  # the field, and the file's place in it
    with opened(browser, server, "corrupt", key=API_KEY) as page:
        attach(page, "broken.png", broken)
        page.get_by_label("Message").fill("What is it?")
        page.get_by_role("button", name="Send").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("422")
        expect(alert).to_contain_text(error["message"])
        expect(alert).to_contain_text(f"[field: {error['param']}]")
        expect(page.locator("#log .turn").last).to_have_attribute("data-state", "failed")
        shot(page, "corrupt-error")


def test_the_key_is_asked_for_on_401_and_kept_for_the_tab_only(browser: Browser, server: str) -> None:
    with opened(browser, server, "key") as page:
        expect(page.get_by_role("alert")).to_contain_text("401")
        shot(page, "key-1-asked")
        enter_key(page, "not-a-key")
        expect(page.get_by_role("alert")).to_contain_text("401")  # refused, asked again
        expect(page.locator("#key-form")).to_be_visible()
        enter_key(page)
        expect(page.get_by_role("alert")).to_be_hidden()
        expect(page.get_by_label("Model")).not_to_have_text("loading…")
        shot(page, "key-2-accepted")
        storage = page.evaluate("[{...sessionStorage}, {...localStorage}, document.cookie]")
        assert storage == [{"pandaserve.apiKey": API_KEY}, {}, ""]


def test_keyboard_alone_attaches_asks_and_sends(browser: Browser, server: str) -> None:
    with opened(browser, server, "keyboard") as page:
        expect(page.get_by_label("API key")).to_be_focused()  # the prompt takes the focus
        page.keyboard.type(API_KEY)
        page.keyboard.press("Enter")
        expect(page.get_by_label("Model")).not_to_have_text("loading…")

        def tab_to(selector: str) -> None:
            for _ in range(20):
                page.keyboard.press("Tab")
                if page.evaluate(f"document.activeElement === document.querySelector('{selector}')"):
                    return
            raise AssertionError(f"Tab never reached {selector}")

        # Listening before the key is pressed: Playwright intercepts the chooser only once a listener
        # exists, and a chooser opened before that is lost (expect_file_chooser raced: 1 in 15 lost).
        choosers: list[FileChooser] = []
        page.on("filechooser", lambda chooser: choosers.append(chooser))
        page.locator("body").focus()
        tab_to("#files")
        page.keyboard.press("Space")
        for _ in range(600):
            if choosers:
                break
            page.wait_for_timeout(50)
        assert choosers, "Space on the file input opened no file chooser"
        choosers[0].set_files({"name": "shapes.png", "mimeType": "image/png", "buffer": IMAGE})
        expect(page.locator("#attachments li")).to_have_count(1)
        tab_to("#message")
        page.keyboard.type("What is in this image?")
        tab_to("#send")
        shot(page, "keyboard-1-on-send")
        page.keyboard.press("Enter")
        assert last_turn_done(page)


# ---- auth off, in-process with fakes at the two seams ------------------------------------------


@contextmanager
def serving(app: object) -> Iterator[str]:
    """uvicorn in a thread of this process, on a free port."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the in-process server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@dataclass
class OpenServer:
    url: str
    encoder: FixedEncoder  # what the page's files arrived as


@pytest.fixture(scope="module")
def open_server(demo_bundle: Path) -> Iterator[OpenServer]:
    """No API keys; two requests a minute, so the third is refused with Retry-After; 1 MiB bodies."""
    sp = spm.SentencePieceProcessor(model_file=str(demo_bundle / "llm" / "tokenizer.model"))
    chunks = [[t] for t in sp.encode("A red square.")] + [[sp.piece_to_id("<0x0A>")], [sp.piece_to_id("##")]]
    chat = chat_service(demo_bundle, ScriptedEngine(chunks))
    app = create_app(Settings(max_body_bytes=2**20), resources(chat, keys=[], rpm=2))
    with serving(app) as url:
        yield OpenServer(url, chat.encoder)  # type: ignore[arg-type]


def drop(page: Page, files: list[tuple[str, str, bytes]]) -> None:
    """Drop files on the page's drop zone, as a drag from the desktop would."""
    page.evaluate(
        """(files) => {
            const dt = new DataTransfer();
            for (const [name, type, b64] of files) {
                dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, {type}));
            }
            const drop = new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true});
            document.getElementById("drop").dispatchEvent(drop);
        }""",
        [[name, mime, base64.b64encode(data).decode()] for name, mime, data in files],
    )


SIX = [
    ("photo.png", "image/png", IMAGE, "image"),
    ("clip.mp4", "video/mp4", video(3, 1.0), "video"),
    ("sound.wav", "audio/wav", wav(3, 1.0), "audio"),
    ("room-depth.png", "image/png", depth_png16(3), "depth"),
    ("hand-thermal.png", "image/png", picture(3, (64, 64), mode="L"), "thermal"),
    ("walk.npy", "", imu_npy(3), "imu"),
]


def test_with_auth_off_dropped_files_of_six_kinds_are_sent_and_a_429_says_when_to_retry(
    browser: Browser, open_server: OpenServer
) -> None:
    with opened(browser, open_server.url, "open") as page:
        expect(page.get_by_label("Model")).to_have_text("demo")  # request 1 of the minute
        expect(page.locator("#key-form")).to_be_hidden()
        drop(page, [(name, mime, data) for name, mime, data, _ in SIX])
        for name, _, _, kind in SIX:
            expect(page.get_by_label(f"Kind of {name}")).to_have_value(kind)
        expect(page.get_by_role("img", name="Preview of photo.png")).to_be_visible()
        expect(page.locator('video[aria-label="Preview of clip.mp4"]')).to_be_visible()
        expect(page.locator('audio[aria-label="Player for sound.wav"]')).to_have_attribute("controls", "")
        page.get_by_role("button", name="Remove photo.png").click()
        attach(page, "photo.jpg", IMAGE)  # picked again: it goes to the end
        shot(page, "open-1-six-kinds")
        page.get_by_label("Message").fill("What is it?")
        page.get_by_role("button", name="Send").click()  # request 2
        assert last_turn_done(page) == "A red square."
        sent = [(m.modality, m.data) for m in open_server.encoder.encoded]
        # In the core's order (image, audio, video, thermal, depth, IMU), each file's bytes as dropped.
        by_kind = {kind: data for _, _, data, kind in SIX}
        assert sent == [(k, by_kind[k]) for k in ("image", "audio", "video", "thermal", "depth", "imu")]

        # Over the body cap: refused from its Content-Length, before the rate limit counts it.
        attach(page, "huge.png", IMAGE + bytes(2**21))
        page.get_by_label("Message").fill("And this?")
        page.get_by_role("button", name="Send").click()
        expect(page.get_by_role("alert")).to_contain_text("Too large (413): the request body is larger than")
        shot(page, "open-2-413")
        page.get_by_role("button", name="Remove huge.png").click()

        page.get_by_label("Message").fill("And again?")
        page.get_by_role("button", name="Send").click()  # request 3: over the rate
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("Too many requests (429)")
        expect(alert).to_contain_text("Try again in")
        expect(page.locator("#key-form")).to_be_hidden()
        shot(page, "open-3-429")
