"""Admission control and the embedding cache over real HTTP (real engine, real Redis): a full engine
or a full decode queue refuses at once with 503 + Retry-After; a repeated file is neither decoded
nor encoded again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import AUTH, OTHER_KEY, running_server
from tests.media import picture, video

pytestmark = pytest.mark.e2e

IMAGE = [("image", ("a.png", picture(4, (64, 64))))]


@pytest.fixture(scope="module")
def client(demo_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    bounds = {"PANDASERVE_MAX_ENGINE_REQUESTS": "1", "PANDASERVE_MAX_DECODE_QUEUE": "2"}
    with (
        running_server(demo_bundle, redis_url, tmp_path_factory.mktemp("admission"), bounds) as server,
        httpx.Client(base_url=server.url, timeout=120, headers=AUTH) as c,
    ):
        yield c


def counter(client: httpx.Client, name: str, **labels: str) -> float:
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    return sum(
        s.value
        for s in families[name].samples
        if s.name.endswith(("_total", "_count")) and labels.items() <= s.labels.items()
    )


def assert_refused_at_once(r: httpx.Response, started: float) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "overloaded_error"
    assert "at capacity" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) >= 1
    assert time.monotonic() - started < 10  # refused, not queued behind the running turn


def test_a_full_engine_refuses_at_once_and_admits_again_after(client: httpx.Client) -> None:
    # Sampled with a fixed seed: a reply known to run ~200 tokens (this greedy one stops within a few).
    form = {"message": "Go on and on", "max_tokens": "400", "stream": "true", "temperature": "1", "seed": "7"}
    with client.stream("POST", "/chat", data=form, files=IMAGE) as running:
        assert running.status_code == 200
        lines = running.iter_lines()
        next(lines)  # the first turn is generating: it holds the one engine slot
        started = time.monotonic()
        refused = client.post("/chat", data={"message": "Me too", "max_tokens": "4"}, files=IMAGE)
        assert_refused_at_once(refused, started)
        assert "(1 turns in flight" in refused.json()["error"]["message"]
        done = [json.loads(line.removeprefix("data: ")) for line in lines if "completion_tokens" in line]
    assert done[0]["finish_reason"] in ("stop", "length")  # the running turn was not disturbed
    r = client.post("/chat", data={"message": "Now?", "max_tokens": "4"}, files=IMAGE)
    assert r.status_code == 200, r.text  # its slot is free again


def test_more_files_than_the_decode_queue_holds_are_refused(client: httpx.Client) -> None:
    files = [("image", (f"{i}.png", picture(40 + i, (64, 64)))) for i in range(3)]
    started = time.monotonic()
    assert_refused_at_once(client.post("/chat", data={"message": "Three", "max_tokens": "4"}, files=files), started)


def test_a_repeated_video_is_neither_decoded_nor_encoded_again(client: httpx.Client) -> None:
    clip = video(time.time_ns() % 2**31, seconds=2.0)  # new bytes on every run: the first turn misses
    files = [("video", ("clip.mp4", clip))]
    decoded = counter(client, "pandaserve_media_decode_seconds", modality="video")
    encoded = counter(client, "pandaserve_media_encode_seconds", modality="video")
    hits = counter(client, "pandaserve_embedding_cache_lookups", result="hit")

    cold = client.post("/chat", data={"message": "What happens?", "max_tokens": "4"}, files=files)
    assert cold.status_code == 200, cold.text
    assert counter(client, "pandaserve_media_decode_seconds", modality="video") == decoded + 1
    assert counter(client, "pandaserve_media_encode_seconds", modality="video") == encoded + 1

    warm = client.post("/chat", data={"message": "What happens?", "max_tokens": "4"}, files=files)
    assert warm.status_code == 200, warm.text
    assert counter(client, "pandaserve_media_decode_seconds", modality="video") == decoded + 1
    assert counter(client, "pandaserve_media_encode_seconds", modality="video") == encoded + 1
    assert counter(client, "pandaserve_embedding_cache_lookups", result="hit") == hits + 1
    assert warm.json()["reply"] == cold.json()["reply"]  # the same embedding: the same greedy reply


def test_the_embedding_cache_is_kept_per_api_key(client: httpx.Client) -> None:
    """A hit is faster than a miss: a cache shared across keys would tell one tenant what another
    uploaded. The same file from another key is decoded and encoded again; from the same key, not."""
    files = [("image", ("a.png", picture(time.time_ns() % 2**31, (64, 64))))]  # new bytes on every run
    decoded = counter(client, "pandaserve_media_decode_seconds", modality="image")
    for key in (AUTH, AUTH, {"Authorization": f"Bearer {OTHER_KEY}"}):
        r = client.post("/chat", data={"message": "What is it?", "max_tokens": "2"}, files=files, headers=key)
        assert r.status_code == 200, r.text
    assert counter(client, "pandaserve_media_decode_seconds", modality="image") == decoded + 2
