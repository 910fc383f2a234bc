"""Model families by the name a bundle's manifest gives (`family`)."""

from __future__ import annotations

import dataclasses

from service.bundle import Bundle
from service.families.base import Family, GenerationDefaults
from service.families.pandagpt import PandaGPT


def load_family(bundle: Bundle) -> Family:
    manifest = bundle.manifest
    match manifest.family:
        case "pandagpt":
            return PandaGPT.load(bundle.tokenizer_path, manifest.stop_token_ids)


def generation_defaults(family: Family, bundle: Bundle) -> GenerationDefaults:
    """The family's defaults, with what the bundle's manifest sets in their place."""
    overrides = bundle.manifest.generation.model_dump(exclude_none=True)
    return dataclasses.replace(family.generation, **overrides)
