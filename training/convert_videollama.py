"""Convert Video-LLaMA's released files into a model bundle (the file half; the keys are
training/videollama_keys.py's).

Inputs (as released):
    llm        HF LLaMA dir of the base LLM: Vicuna v0 (template "vicuna") or LLaMA-2-chat ("llama2")
    vl         the VL checkpoint (e.g. finetune-vicuna7b-v2.pth): torch.save'd {"model": ..., "optimizer":
               ..., ...}; its "model" holds the video branch, LLaMA's persistent buffers too
    al         the AL checkpoint (optional): {"model": ...}, the audio branch
    eva_vit    eva_vit_g.pth: a bare EVA ViT-g state dict (40 blocks, no prefix)
    qformer    blip2_pretrained_flant5xxl.pth: {"model": ...} with ln_vision, query_tokens, Qformer.*
    imagebind  imagebind_huge.pth (with `al`): the audio branch runs on it

Output (see service.bundle): manifest.json (family "videollama"), videollama_vision.safetensors
and, with `al`, videollama_audio.safetensors, under the original key names; the LLM dir and the
ImageBind checkpoint are referenced by absolute path, never copied. The sizes come from the files
(upstream's head sizes: ViT 88, Q-Former 64), so 7B, 13B and any smaller model built with those
head sizes convert without a hand-written config; everything is checked before anything is
written, and the bundle is written atomically.

Usage: pandaserve bundle convert-videollama --llm DIR --vl VL.pth [--al AL.pth] --eva-vit FILE
       --qformer FILE [--imagebind FILE] [--template vicuna|llama2] OUT_DIR
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file
from torch import Tensor

from encoders.videollama import VideoLlamaConfig, preprocess
from service.bundle import ImageBindSpec, Manifest, VideoLlamaSpec, write_manifest
from training.convert import resolve_imagebind_preset
from training.staging import staged_dir
from training.videollama_keys import CheckpointKeyError, check_branches, map_audio, map_vision

VISION_FILE = "videollama_vision.safetensors"
AUDIO_FILE = "videollama_audio.safetensors"


def read_state(path: Path, what: str, wrapped: bool = True) -> dict[str, Tensor]:
    """A released file's weights: its `["model"]` (the optimizer state and the rest beside it are not
    read), or the whole file when it is a bare state dict (`wrapped=False`, eva_vit_g.pth)."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointKeyError(f"{what} ({path}) could not be read: {exc}") from exc
    state = loaded.get("model") if wrapped and isinstance(loaded, dict) else loaded
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        expected = 'a dict with the weights under "model"' if wrapped else "a state dict"
        raise CheckpointKeyError(f"{what} ({path}) is not {expected}")
    return dict(state)


def _llm_hidden_size(llm: Path) -> int:
    try:
        return int(json.loads((llm / "config.json").read_text())["hidden_size"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointKeyError(f"{llm} is not a HF LLaMA dir with a config.json ({exc})") from exc


def _contiguous(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """safetensors stores each tensor on its own: expanded buffers and views are made whole."""
    return {k: v.contiguous().clone() for k, v in state.items()}


def convert_videollama(
    llm: Path,
    vl: Path,
    eva_vit: Path,
    qformer: Path,
    out: Path,
    al: Path | None = None,
    imagebind: Path | None = None,
    template: Literal["vicuna", "llama2"] = "vicuna",
) -> Manifest:
    if (al is None) != (imagebind is None):
        raise CheckpointKeyError("the audio branch (--al) runs on ImageBind: give --al and --imagebind together")
    vision = map_vision(
        read_state(eva_vit, "eva_vit_g.pth", wrapped=False),
        read_state(qformer, "the BLIP-2 checkpoint"),
        read_state(vl, "the VL checkpoint"),
    )
    audio = map_audio(read_state(al, "the AL checkpoint")) if al is not None else None
    config = check_branches(vision, audio)
    hidden = _llm_hidden_size(llm)
    if config.llm_hidden_size != hidden:
        raise CheckpointKeyError(
            f"llama_proj gives {config.llm_hidden_size}-wide vectors but the LLM at {llm} is {hidden} wide: "
            "the checkpoint was trained for another base model"
        )
    imagebind_spec = None
    if imagebind is not None:
        _, preset = resolve_imagebind_preset(imagebind)
        if config.audio_encoder_width != preset.out_embed_dim:
            raise CheckpointKeyError(
                f"the audio branch reads {config.audio_encoder_width}-wide ImageBind embeddings but {imagebind} "
                f"gives {preset.out_embed_dim}"
            )
        imagebind_spec = ImageBindSpec(checkpoint=str(imagebind.resolve()), config=asdict(preset))
    return write_videollama_bundle(out, llm, template, config, vision, audio, imagebind_spec)


def write_videollama_bundle(
    out: Path,
    llm: Path,
    template: Literal["vicuna", "llama2"],
    config: VideoLlamaConfig,
    vision: Mapping[str, Tensor],
    audio: Mapping[str, Tensor] | None,
    imagebind: ImageBindSpec | None,
) -> Manifest:
    """The bundle, atomically: the branches' weights under their original names, the LLM and
    ImageBind referenced by absolute path."""
    manifest = Manifest(
        family="videollama",
        template=template,
        llm=str(llm.resolve()),
        lora=None,
        imagebind=imagebind,
        videollama=VideoLlamaSpec(vision=VISION_FILE, audio=AUDIO_FILE if audio else None, config=asdict(config)),
        modalities=list(preprocess.MODALITIES if audio else preprocess.VISUAL_MODALITIES),
    )
    with staged_dir(out) as tmp:
        save_file(_contiguous(vision), str(tmp / VISION_FILE))
        if audio is not None:
            save_file(_contiguous(audio), str(tmp / AUDIO_FILE))
        write_manifest(tmp, manifest)
    return manifest
