"""Model families by the name a bundle's manifest gives (`family`)."""

from __future__ import annotations

import dataclasses

from service.bundle import Bundle
from service.families.base import Family, GenerationDefaults
from service.families.pandagpt import PandaGPT
from service.families.videollama import VideoLlama


def load_family(bundle: Bundle) -> Family:
    manifest = bundle.manifest
    match manifest.family:
        case "pandagpt":
            return PandaGPT.load(bundle.tokenizer_path, manifest.stop_token_ids)
        case "videollama":
            # A bundle with Video-LLaMA's audio branch takes audio, as demo_audiovideo.py served it.
            audio_branch = "audio" in manifest.modalities
            return VideoLlama.load(bundle.tokenizer_path, manifest.template or "vicuna", audio_branch)


def generation_defaults(family: Family, bundle: Bundle) -> GenerationDefaults:
    """The family's defaults, with what the bundle's manifest sets in their place."""
    overrides = bundle.manifest.generation.model_dump(exclude_none=True)
    return dataclasses.replace(family.generation, **overrides)
