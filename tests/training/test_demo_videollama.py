"""`pandaserve bundle demo --family videollama`: Video-LLaMA's tiny branches, seeded, over the demo
bundle's LLM and ImageBind (referenced, not copied), loading strictly and servable beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from encoders.videollama import VideoLlamaAudio, VideoLlamaConfig, VideoLlamaVision
from service.bundle import load_bundle
from service.resources import check_served_together
from service.settings import Settings
from training.demo_videollama import build_videollama_demo

pytestmark = pytest.mark.integration


def test_the_demo_loads_strictly_over_its_base_and_is_seeded(demo_bundle: Path, tmp_path: Path) -> None:
    build_videollama_demo(tmp_path / "a", demo_bundle, seed=0)
    build_videollama_demo(tmp_path / "b", demo_bundle, seed=0, template="llama2")
    a, b, base = load_bundle(tmp_path / "a"), load_bundle(tmp_path / "b"), load_bundle(demo_bundle)
    manifest = a.manifest
    assert (manifest.family, manifest.template, b.manifest.template) == ("videollama", "vicuna", "llama2")
    assert a.llm_dir == base.llm_dir and a.imagebind_path == base.imagebind_path  # referenced, not copied
    assert not (tmp_path / "a" / "llm").exists()
    assert manifest.modalities == ["image", "video", "audio"] and manifest.videollama is not None
    config = VideoLlamaConfig(**manifest.videollama.config)
    VideoLlamaVision(config).load_state_dict(load_file(a.path(manifest.videollama.vision)), strict=True)
    assert manifest.videollama.audio is not None
    VideoLlamaAudio(config).load_state_dict(load_file(a.path(manifest.videollama.audio)), strict=True)
    # The same seed, the same weights (the template changes none).
    first, second = load_file(a.path(manifest.videollama.vision)), load_file(b.path(manifest.videollama.vision))
    assert all(torch.equal(first[k], second[k]) for k in first)
    check_served_together([base, a], Settings())  # one engine serves both
