"""One engine, both families: a server loads the demo PandaGPT bundle and the Video-LLaMA demo bundle
(`pandaserve bundle demo --family videollama`) on the same base LLM (PandaGPT with its LoRA,
Video-LLaMA without), as `make demo` serves them, routes each request by `model`, and
answers turns of both at once, each equal to its own family's independent reference. Bundles on
different bases are refused at start; the bad-input corpus gets the same answers from Video-LLaMA."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from encoders.videollama import preprocess
from service.bundle import load_bundle
from service.core.session_store import KEY_PREFIX
from service.errors import NotReady
from service.resources import check_served_together
from service.settings import Settings
from tests.conftest import AUTH, REPO, running_server
from tests.hostile import BAD_FILES
from tests.media import valid
from tests.oracle import Oracle as PandaGPTOracle
from tests.service.test_videollama_serving import Oracle as VideoLlamaOracle
from tests.service.test_videollama_serving import sounding_video

pytestmark = pytest.mark.e2e

MAX_TOKENS = 10


@pytest.fixture(scope="module")
def videollama(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Video-LLaMA demo bundle over the demo's LLM and ImageBind, as `make demo` writes it."""
    bundle = tmp_path_factory.mktemp("second-family") / "videollama"
    command = ["bundle", "demo", "--family", "videollama", "--base", str(demo_bundle), str(bundle)]
    subprocess.run([sys.executable, "-m", "pandaserve", *command], check=True, cwd=REPO, capture_output=True)
    return bundle


@pytest.fixture(scope="module")
def server(
    demo_bundle: Path, videollama: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    extra = {"PANDASERVE_MORE_BUNDLES": str(videollama), "PANDASERVE_SERVED_MODEL_NAME": "pandagpt"}
    with running_server(demo_bundle, redis_url, tmp_path_factory.mktemp("two-families"), extra) as running:
        yield running.url


def chat(url: str, form: dict[str, str], uploads: list | None = None) -> httpx.Response:
    form = {"temperature": "0", "max_tokens": str(MAX_TOKENS), "return_token_ids": "true"} | form
    return httpx.post(f"{url}/chat", data=form, files=uploads, headers=AUTH, timeout=300)


def test_models_lists_both(server: str) -> None:
    r = httpx.get(f"{server}/v1/models", headers=AUTH)
    assert [m["id"] for m in r.json()["data"]] == [
        "pandagpt",
        "videollama",
    ]  # the first named by PANDASERVE_SERVED_MODEL_NAME
    assert httpx.get(f"{server}/v1/models/videollama", headers=AUTH).status_code == 200
    r = httpx.get(f"{server}/v1/models/other", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_a_turn_of_each_family_at_once_each_equal_to_its_reference(
    server: str, demo_bundle: Path, videollama: Path
) -> None:
    """Three of each at once, so the engine's steps batch rows with and without the adapter (that
    mix once computed the bare rows wrongly: vllm_local's zero adapter)."""
    images, videos = [valid("image", 3 + i) for i in range(3)], [sounding_video(11 + i) for i in range(3)]
    pandagpt = {"message": "What is in this?"}
    second = {"message": "What is in this?", "model": "videollama"}
    with ThreadPoolExecutor(6) as pool:
        firsts = [pool.submit(chat, server, pandagpt, [("image", ("a.png", image))]) for image in images]
        others = [pool.submit(chat, server, second, [("video", ("v.mp4", video))]) for video in videos]
        replies = [f.result() for f in firsts], [f.result() for f in others]
    for r in (*replies[0], *replies[1]):
        assert r.status_code == 200, r.text

    panda = PandaGPTOracle(demo_bundle)
    for image, r in zip(images, replies[0], strict=True):
        assert r.json()["token_ids"] == panda.reply_ids([], "What is in this?", [("image", image)], MAX_TOKENS)
    vl = VideoLlamaOracle(videollama, "vicuna")
    for video, r in zip(videos, replies[1], strict=True):
        assert r.json()["token_ids"] == vl.reply_ids([([("video", video)], "What is in this?")], [])  # type: ignore[list-item]
        assert r.json()["media"][0]["sound"] is True
    other, video = replies[1][0], videos[0]
    asked = [([("video", video)], "What is in this?")]

    # The session remembers its model: the next turn goes to Video-LLaMA without naming it.
    session_id = other.json()["session_id"]
    again = chat(server, {"message": "And the colour?", "session_id": session_id})
    assert again.status_code == 200, again.text
    asked.append(([], "And the colour?"))
    assert again.json()["token_ids"] == vl.reply_ids(asked, [other.json()["reply"]])  # type: ignore[arg-type]
    view = httpx.get(f"{server}/sessions/{session_id}", headers=AUTH).json()
    assert view["model"] == "videollama" and len(view["turns"]) == 2
    # ... and a request may name it, but not change it.
    r = chat(server, {"message": "Hi", "session_id": session_id, "model": "pandagpt"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model", r.text
    assert len(httpx.get(f"{server}/sessions/{session_id}", headers=AUTH).json()["turns"]) == 2


def test_the_openai_api_routes_by_model(server: str) -> None:
    body = {
        "model": "videollama",
        "max_tokens": 4,
        "temperature": 0,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }
    r = httpx.post(f"{server}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    # Video-LLaMA needs a medium in the conversation: the refusal is its family's, so it was routed there.
    assert r.status_code == 422 and "image, video or audio" in r.json()["error"]["message"], r.text
    r = httpx.post(f"{server}/v1/chat/completions", json=body | {"model": "pandagpt"}, headers=AUTH, timeout=120)
    assert r.status_code == 422 and "thermal" in r.json()["error"]["message"], r.text


def test_bundles_on_different_bases_are_refused_at_start(demo_bundle: Path, videollama: Path, tmp_path: Path) -> None:
    wider = tmp_path / "llm"
    shutil.copytree(demo_bundle / "llm", wider)
    config = json.loads((wider / "config.json").read_text())
    (wider / "config.json").write_text(json.dumps(config | {"hidden_size": 2 * config["hidden_size"]}))
    other = tmp_path / "bundle"
    shutil.copytree(videollama, other)
    manifest = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps(manifest | {"llm": str(wider)}))

    bundles = [load_bundle(demo_bundle), load_bundle(other)]
    with pytest.raises(NotReady, match=r"different LLMs \(hidden size 256 and 512\)"):
        check_served_together(bundles, Settings())
    (wider / "config.json").write_text(json.dumps(config))  # the same width, another directory
    with pytest.raises(NotReady, match="name different LLM directories"):
        check_served_together(bundles, Settings())
    same = [load_bundle(demo_bundle), load_bundle(videollama)]
    check_served_together(same, Settings())
    with pytest.raises(NotReady, match="PANDASERVE_ENGINE_URL"):
        check_served_together(same, Settings(engine_url="http://engine:8000"))


# The bad-input corpus on the Video-LLaMA bundle: its decoders are PandaGPT's, so every case of the
# kinds it takes gets the same 4xx naming the field, and the session it was sent to is untouched.
VIDEO_LLAMA_CASES = [case for case, (field, *_) in BAD_FILES.items() if field in preprocess.MODALITIES]


@pytest.fixture(scope="module")
def videollama_session(server: str) -> str:
    form = {"message": "Look.", "max_tokens": "4", "model": "videollama"}
    r = httpx.post(f"{server}/chat", data=form, files=[("image", ("a.png", valid("image", 4)))], headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


@pytest.mark.parametrize("case", VIDEO_LLAMA_CASES)
def test_bad_file_on_video_llama(server: str, redis_url: str, videollama_session: str, case: str) -> None:
    field, make, status, words = BAD_FILES[case]
    with redis.Redis.from_url(redis_url) as raw:
        before = raw.hgetall(KEY_PREFIX + videollama_session)
        form = {"message": "And this?", "session_id": videollama_session}
        r = httpx.post(f"{server}/chat", data=form, files=[(field, ("f", make()))], headers=AUTH, timeout=120)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["param"] == field
        assert error["message"].startswith(f"{field}[0]: ") and words in error["message"], error["message"]
        assert raw.hgetall(KEY_PREFIX + videollama_session) == before
    assert httpx.get(f"{server}/readyz").status_code == 200
