"""Over HTTP, the trained demo bundle names what is in held-out synthetic images (issue 7's bar:
the right colour in >= 90% of replies, the right shape in >= 70%; the rates are printed)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH, running_server
from training import synthetic

pytestmark = pytest.mark.e2e

HELD_OUT_SEED = 901  # a split no stage of the recipe trained on (training/demo_recipe.py)
IMAGES = 200


@pytest.fixture(scope="module")
def client(seeing_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    log_dir = tmp_path_factory.mktemp("seeing-server")
    with (
        running_server(seeing_bundle, redis_url, log_dir) as running,
        httpx.Client(base_url=running.url, headers=AUTH, timeout=120) as client,
    ):
        yield client


def named(reply: str, word: str, *forms: str) -> bool:
    words = reply.lower().replace(".", " ").replace(",", " ").split()
    return any(w in words for w in (word, *forms))


@pytest.fixture(scope="module")
def rates(client: httpx.Client) -> dict[str, float]:
    """The share of replies to "What is in this image?" that name the right colour, and the right shape."""
    colour_ok = shape_ok = 0
    misses = []
    for name, scene, _ in synthetic.items(IMAGES, HELD_OUT_SEED):
        files = {"image": (name, synthetic.png_bytes(scene), "image/png")}
        r = client.post("/chat", data={"message": "What is in this image?", "max_tokens": "24"}, files=files)
        assert r.status_code == 200, r.text
        reply = r.json()["reply"]
        colour, shape = named(reply, scene.colour), named(reply, scene.shape, synthetic.PLURALS[scene.shape])
        colour_ok += colour
        shape_ok += shape
        if not (colour and shape):
            misses.append(f"{scene.count} {scene.colour} {scene.shape}: {reply!r}")
    measured = {"colour": colour_ok / IMAGES, "shape": shape_ok / IMAGES}
    print(f"held-out images: {measured}; misses: {misses[:20]}")
    return measured


def test_replies_name_the_right_colour(rates: dict[str, float]) -> None:
    assert rates["colour"] >= 0.9, rates


def test_replies_name_the_right_shape(rates: dict[str, float]) -> None:
    assert rates["shape"] >= 0.7, rates
