"""POST /embeddings and `pandaserve embed`: each modality's ImageBind embedding, checked from outside."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from encoders.modalities import MODALITIES as REGISTRY
from tests.conftest import AUTH, REPO
from tests.media import valid
from tests.oracle import Oracle

pytestmark = pytest.mark.e2e

MODALITIES = list(REGISTRY)
EMBED = [sys.executable, "-m", "pandaserve", "embed"]


@pytest.fixture(scope="module")
def oracle(demo_bundle: Path) -> Oracle:
    return Oracle(demo_bundle)


@pytest.fixture(scope="module")
def client(server: str) -> httpx.Client:
    with httpx.Client(base_url=server, timeout=120, headers=AUTH) as c:
        yield c


def test_every_modality_equals_the_oracle(client: httpx.Client, oracle: Oracle) -> None:
    uploads = {f"{m}[0]": valid(m, 5) for m in MODALITIES} | {"image[1]": valid("image", 6)}
    r = client.post("/embeddings", files=[(field.split("[")[0], (field, data)) for field, data in uploads.items()])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimensions"] == 1024
    order = ["image[0]", "image[1]", "audio[0]", "video[0]", "thermal[0]", "depth[0]", "imu[0]"]
    assert [d["field"] for d in body["data"]] == order
    for item in body["data"]:
        data = uploads[item["field"]]
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
        expected = oracle.embedding(item["modality"], data)
        # Audio goes through float32 resampling/fbank; the references may differ in the last bits.
        torch.testing.assert_close(torch.tensor(item["embedding"]), expected, atol=2e-4, rtol=0)


def test_postprocessor_norms_follow_pandagpt(client: httpx.Client) -> None:
    files = [(m, (m, valid(m, 7))) for m in MODALITIES]
    norms = {
        d["modality"]: torch.tensor(d["embedding"]).norm().item()
        for d in client.post("/embeddings", files=files).json()["data"]
    }
    # Audio: L2-normalised without ImageBind's x20 (PandaGPT); thermal x10; depth x5, IMU x5 (upstream).
    # Clip/crop means (audio, video) are taken after the postprocessor, so those may fall below 1.
    assert norms["image"] == pytest.approx(1.0, abs=1e-5)
    assert 0.5 < norms["audio"] <= 1.0 + 1e-5 and 0.5 < norms["video"] <= 1.0 + 1e-5
    assert norms["thermal"] == pytest.approx(10.0, abs=1e-4)
    assert norms["depth"] == pytest.approx(5.0, abs=1e-4) and norms["imu"] == pytest.approx(5.0, abs=1e-4)


def test_no_file_is_422(client: httpx.Client) -> None:
    r = client.post("/embeddings", data={"x": "1"})
    assert r.status_code == 422 and "at least one file" in r.json()["error"]["message"]


@pytest.mark.parametrize("modality", ["image", "audio", "imu"])
def test_cli_prints_what_the_endpoint_returns(
    client: httpx.Client, demo_bundle: Path, tmp_path: Path, modality: str
) -> None:
    path = tmp_path / "input.bin"
    path.write_bytes(valid(modality, 8))
    cmd = [
        sys.executable,
        "-m",
        "pandaserve",
        "embed",
        "--bundle",
        str(demo_bundle),
        "--modality",
        modality,
        str(path),
    ]
    out = json.loads(subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout)
    served = client.post("/embeddings", files=[(modality, ("f", path.read_bytes()))]).json()
    # The same file, the same embedding up to float32 rounding: the server may have computed it in a
    # batch with other files (or cached it so), the CLI computes it alone.
    [mine], [theirs] = out.pop("data"), served.pop("data")
    assert out == served and mine.pop("embedding") == pytest.approx(theirs.pop("embedding"), abs=1e-6)
    assert mine == theirs  # field, modality, sha256


def test_cli_names_a_bad_file(demo_bundle: Path, tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    cmd = [*EMBED, "--bundle", str(demo_bundle), "--modality", "image", str(path)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert "image[0]: the PNG image is truncated or corrupt" in result.stderr
