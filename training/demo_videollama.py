"""The Video-LLaMA demo bundle: Video-LLaMA's tiny branches (encoders/videollama, preset "tiny"),
random and seeded, over a PandaGPT demo bundle's LLM and ImageBind, referenced by absolute path and
not copied, so the two are served from one engine (`make demo`).

It knows nothing of what it is shown: its branches are untrained (the demo's recipe trains
PandaGPT's projector and LoRA only), so its replies are the demo LLM's words steered by random
vectors. It is there to run Video-LLaMA's whole path on a laptop: decoding a video's frames and its
sound, the vision and audio branches, the template, the stop rule.

Usage: pandaserve bundle demo --family videollama DIR [--base bundles/demo] [--template vicuna|llama2]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

import torch

from encoders.videollama import PRESETS, VideoLlamaAudio, VideoLlamaVision
from service.bundle import ImageBindSpec, load_bundle
from training.convert_videollama import write_videollama_bundle


def build_videollama_demo(
    out: Path, base: Path, seed: int = 0, template: Literal["vicuna", "llama2"] = "vicuna"
) -> None:
    bundle = load_bundle(base)
    hidden = json.loads((bundle.llm_dir / "config.json").read_text())["hidden_size"]
    config = dataclasses.replace(PRESETS["tiny"], llm_hidden_size=hidden)
    with torch.random.fork_rng(devices=[]):  # the branches' own init, seeded, leaving the caller's RNG alone
        torch.manual_seed(seed)
        vision, audio = VideoLlamaVision(config), VideoLlamaAudio(config)
    imagebind = ImageBindSpec(checkpoint=str(bundle.imagebind_path), config=bundle.imagebind.config)
    write_videollama_bundle(out, bundle.llm_dir, template, config, vision.state_dict(), audio.state_dict(), imagebind)
