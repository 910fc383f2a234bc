"""`pandaserve bundle convert-videollama` on synthetic released files with the real key names: the
files as upstream saves them ({"model": ...} beside the optimizer state, a bare EVA file with one
block more than used, buffers to ignore), a bundle whose weights load strictly into our branches and
give the source model's outputs, and bad inputs refused by name before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from encoders.videollama import PRESETS, VideoLlamaAudio, VideoLlamaConfig, VideoLlamaVision
from service.bundle import load_bundle
from tests.training.test_videollama_keys import released_files
from training.convert_videollama import convert_videollama
from training.videollama_keys import CheckpointKeyError

pytestmark = pytest.mark.integration

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def source() -> tuple[VideoLlamaVision, VideoLlamaAudio]:
    torch.manual_seed(1)
    return VideoLlamaVision(TINY).eval(), VideoLlamaAudio(TINY).eval()


@pytest.fixture(scope="module")
def files(
    source: tuple[VideoLlamaVision, VideoLlamaAudio], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The released files, saved as upstream saves them."""
    eva, blip2, vl, al = released_files(*source)
    root = tmp_path_factory.mktemp("released")
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 1e-4}]}
    paths = {name: root / f"{name}.pth" for name in ("eva", "blip2", "vl", "al")}
    torch.save(eva, paths["eva"])
    torch.save({"model": blip2}, paths["blip2"])
    torch.save({"model": vl, "optimizer": optimizer, "config": {"run": "finetune"}, "epoch": 2}, paths["vl"])
    torch.save({"model": al, "optimizer": optimizer, "epoch": 2}, paths["al"])
    return paths


def convert(files: dict[str, Path], demo_bundle: Path, out: Path, **changes: object) -> None:
    args: dict[str, object] = {
        "llm": demo_bundle / "llm",
        "vl": files["vl"],
        "eva_vit": files["eva"],
        "qformer": files["blip2"],
        "out": out,
        "al": files["al"],
        "imagebind": demo_bundle / "imagebind.pth",
    } | changes
    convert_videollama(**args)  # type: ignore[arg-type]


def test_the_bundle_loads_strictly_and_gives_the_source_models_outputs(
    source: tuple[VideoLlamaVision, VideoLlamaAudio], files: dict[str, Path], demo_bundle: Path, tmp_path: Path
) -> None:
    vision, audio = source
    convert(files, demo_bundle, tmp_path / "bundle", template="llama2")
    bundle = load_bundle(tmp_path / "bundle")
    manifest = bundle.manifest
    assert (manifest.family, manifest.template, manifest.lora) == ("videollama", "llama2", None)
    assert Path(manifest.llm).is_absolute() and manifest.imagebind is not None
    assert manifest.modalities == ["image", "video", "audio"] and manifest.videollama is not None
    config = VideoLlamaConfig(**manifest.videollama.config)
    assert config == TINY  # the sizes read off the files

    ours_vision, ours_audio = VideoLlamaVision(config).eval(), VideoLlamaAudio(config).eval()
    ours_vision.load_state_dict(load_file(bundle.path(manifest.videollama.vision)), strict=True)
    assert manifest.videollama.audio is not None
    ours_audio.load_state_dict(load_file(bundle.path(manifest.videollama.audio)), strict=True)
    frames = torch.randn(1, 3, 2, 224, 224)
    clips = torch.randn(1, 8, config.audio_encoder_width)
    with torch.no_grad():
        torch.testing.assert_close(ours_vision(frames), vision(frames), rtol=0, atol=0)
        torch.testing.assert_close(ours_audio(clips), audio(clips), rtol=0, atol=0)


def test_without_the_audio_branch(files: dict[str, Path], demo_bundle: Path, tmp_path: Path) -> None:
    convert(files, demo_bundle, tmp_path / "bundle", al=None, imagebind=None)
    manifest = load_bundle(tmp_path / "bundle").manifest
    assert manifest.modalities == ["image", "video"] and manifest.imagebind is None
    assert manifest.videollama is not None and manifest.videollama.audio is None
    assert not (tmp_path / "bundle" / "videollama_audio.safetensors").exists()


def test_a_bad_file_is_named_and_nothing_is_written(files: dict[str, Path], demo_bundle: Path, tmp_path: Path) -> None:
    stray = tmp_path / "vl-with-a-stray-key.pth"
    vl = torch.load(files["vl"], weights_only=True)
    vl["model"]["llama_proj.extra"] = torch.zeros(1)
    torch.save(vl, stray)
    with pytest.raises(CheckpointKeyError, match=r"the VL checkpoint: 1 unexpected keys: llama_proj\.extra"):
        convert(files, demo_bundle, tmp_path / "out", vl=stray)
    with pytest.raises(CheckpointKeyError, match=r'is not a dict with the weights under "model"'):
        convert(files, demo_bundle, tmp_path / "out", vl=files["eva"])
    with pytest.raises(CheckpointKeyError, match="give --al and --imagebind together"):
        convert(files, demo_bundle, tmp_path / "out", imagebind=None)
    assert not (tmp_path / "out").exists()


def test_an_llm_of_another_width_is_refused(files: dict[str, Path], demo_bundle: Path, tmp_path: Path) -> None:
    llm = tmp_path / "llm"
    llm.mkdir()
    config = json.loads((demo_bundle / "llm" / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps(config | {"hidden_size": 512}))
    with pytest.raises(CheckpointKeyError, match="256-wide vectors but the LLM .* is 512 wide"):
        convert(files, demo_bundle, tmp_path / "out", llm=llm)


def test_the_command(files: dict[str, Path], demo_bundle: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "pandaserve", "bundle", "convert-videollama", "--llm", str(demo_bundle / "llm")]
    base += ["--vl", str(files["vl"]), "--eva-vit", str(files["eva"]), "--qformer", str(files["blip2"])]
    ok = subprocess.run([*base, str(tmp_path / "b")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert load_bundle(tmp_path / "b").manifest.family == "videollama"
    bad = subprocess.run([*base, "--al", str(files["al"]), str(tmp_path / "c")], capture_output=True, text=True)
    assert bad.returncode != 0 and "give --al and --imagebind together" in bad.stderr
