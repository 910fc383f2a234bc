"""The encoder service (`pandaserve encoders serve`) and an API replica that uses it instead of an
ImageBind of its own (PANDASERVE_ENCODER_URL): the same embeddings and replies as the embedded
default, the same 4xx for a bad file, and 503 naming the encoder when the service is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import AUTH, RunningServer, running_encoders, running_server
from tests.media import picture, valid
from tests.oracle import Oracle, assert_served_chat_equals
from tests.service.test_bad_inputs import CORPUS

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def encoders(demo_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_encoders(demo_bundle, redis_url, tmp_path_factory.mktemp("encoders")) as running:
        yield running


@pytest.fixture(scope="module")
def replica(
    encoders: RunningServer, demo_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {"PANDASERVE_ENCODER_URL": encoders.url}
    with running_server(demo_bundle, redis_url, tmp_path_factory.mktemp("replica"), env) as running:
        yield running


def embeddings(url: str, files: list[tuple[str, tuple[str, bytes]]]) -> httpx.Response:
    return httpx.post(f"{url}/embeddings", files=files, headers=AUTH, timeout=120)


def test_embeddings_through_the_encoder_service_equal_the_embedded_ones(server: str, replica: RunningServer) -> None:
    files = [(m, (m, valid(m, 41))) for m in ("image", "audio", "video", "thermal", "depth", "imu")]
    local, remote = embeddings(server, files), embeddings(replica.url, files)
    assert local.status_code == remote.status_code == 200, remote.text
    for a, b in zip(local.json()["data"], remote.json()["data"], strict=True):
        assert (a["field"], a["modality"], a["sha256"]) == (b["field"], b["modality"], b["sha256"])
        torch.testing.assert_close(torch.tensor(b["embedding"]), torch.tensor(a["embedding"]), rtol=0, atol=1e-5)


def test_a_conversation_through_the_encoder_service_equals_hf_peft(replica: RunningServer, demo_bundle: Path) -> None:
    media = [("image", valid("image", 43)), ("imu", valid("imu", 44))]
    assert_served_chat_equals(replica.url, Oracle(demo_bundle), ["What is in this?", "And the colour?"], media)


@pytest.mark.parametrize("case", ["image-text", "image-truncated-png", "image-bomb", "audio-empty", "imu-binary"])
def test_a_bad_file_gets_the_same_4xx_as_locally(server: str, replica: RunningServer, case: str) -> None:
    field, make, status, _ = CORPUS[case]
    data = make()
    local, remote = (
        httpx.post(f"{url}/chat", data={"message": "hi"}, files=[(field, ("f", data))], headers=AUTH, timeout=120)
        for url in (server, replica.url)
    )
    assert local.status_code == remote.status_code == status
    assert remote.json() == local.json()  # the same envelope: type, message, param


def test_the_encoder_service_gone_is_503_naming_it(replica: RunningServer, encoders: RunningServer) -> None:
    """Last in the module: it stops the module's encoder service."""
    encoders.proc.kill()
    encoders.proc.wait()
    with httpx.Client(base_url=replica.url, headers=AUTH, timeout=60) as client:
        r = client.post("/chat", data={"message": "hi"}, files=[("image", ("a.png", picture(50, (64, 64))))])
        assert r.status_code == 503 and "encoder service" in r.json()["error"]["message"], r.text
        assert client.get("/readyz").status_code == 503
