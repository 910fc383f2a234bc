"""The feature cache: each distinct image encoded once by the encoder pool, equal to ImageBind on the
reference preprocessing, keyed by the bytes' sha256; a second run encodes nothing."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from encoders.errors import MediaError
from encoders.imagebind import ImageBindConfig, load_imagebind
from encoders.limits import MediaLimits
from service.bundle import load_bundle
from tests.encoders.test_image import reference
from tests.media import picture
from training.features import FeatureCache, compute_features

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def imagebind(demo_bundle: Path) -> tuple[Path, ImageBindConfig]:
    bundle = load_bundle(demo_bundle)
    return bundle.imagebind_path, ImageBindConfig(**bundle.imagebind.config)


def test_encoded_once_cached_by_content_and_exact(tmp_path: Path, imagebind: tuple[Path, ImageBindConfig]) -> None:
    checkpoint, config = imagebind
    data = [picture(seed, (320, 240), "JPEG") for seed in range(3)]
    paths = []
    for name, blob in [("a.jpg", data[0]), ("b.jpg", data[1]), ("c.jpg", data[2]), ("copy-of-a.jpg", data[0])]:
        (tmp_path / name).write_bytes(blob)
        paths.append(tmp_path / name)
    cache_root = tmp_path / "cache"

    features, stats = compute_features(paths, checkpoint, config, cache_root, progress=False)
    assert (stats.images, stats.encoded) == (3, 3)  # the copy is the same content: encoded once
    assert features.shape == (4, 1024) and features.dtype == torch.float32
    assert torch.equal(features[0], features[3])

    model = load_imagebind(checkpoint, config)
    with torch.inference_mode():
        for blob, row in zip(data, features, strict=False):
            expected = model({"vision": torch.tensor(reference(blob))[None]})["vision"][0]
            assert torch.allclose(row, expected, atol=1e-5), (row - expected).abs().max()

    # On disk: safetensors shards keyed by the sha256 of each file's bytes.
    shards = list(cache_root.rglob("shard-*.safetensors"))
    assert len(shards) == 1
    with safe_open(str(shards[0]), framework="pt") as f:
        assert set(f.keys()) == {hashlib.sha256(blob).hexdigest() for blob in data}

    # A second run (a new image added) encodes only the new one and reads the rest.
    (tmp_path / "d.jpg").write_bytes(picture(9, (200, 300), "PNG"))
    again, stats = compute_features([*paths, tmp_path / "d.jpg"], checkpoint, config, cache_root, progress=False)
    assert (stats.images, stats.encoded) == (4, 1)
    assert torch.equal(again[:4], features)
    assert len(list(cache_root.rglob("shard-*.safetensors"))) == 2


def test_other_limits_use_another_namespace(tmp_path: Path, imagebind: tuple[Path, ImageBindConfig]) -> None:
    checkpoint, _ = imagebind
    a = FeatureCache.for_checkpoint(tmp_path, checkpoint, MediaLimits())
    b = FeatureCache.for_checkpoint(tmp_path, checkpoint, replace(MediaLimits(), max_side=1024))
    assert a.directory != b.directory and a.directory.name == b.directory.name == "image-v1"


def test_a_bad_image_is_named(tmp_path: Path, imagebind: tuple[Path, ImageBindConfig]) -> None:
    checkpoint, config = imagebind
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(MediaError, match="broken.jpg"):
        compute_features([bad], checkpoint, config, tmp_path / "cache", progress=False)
