"""A model bundle: one directory per deployed model, same layout for real and demo weights.

manifest.json names the parts; paths in it are relative to the bundle or absolute.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from encoders.modalities import MODALITIES

MANIFEST = "manifest.json"


class ImageBindSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str
    # The original ImageBindModel constructor's hyper-parameters (encoders.imagebind.ImageBindConfig).
    config: dict[str, Any]


class VideoLlamaSpec(BaseModel):
    """Video-LLaMA's encoders (encoders.videollama), under the original state-dict names."""

    model_config = ConfigDict(extra="forbid")

    vision: str  # EVA ViT-g, ln_vision, the BLIP-2 and video Q-Formers, llama_proj (safetensors)
    audio: str | None = None  # the audio Q-Former and audio_llama_proj, on the bundle's ImageBind
    # encoders.videollama.VideoLlamaConfig's fields: the sizes the converter read off the files.
    config: dict[str, Any]


class GenerationOverrides(BaseModel):
    """The bundle's own generation defaults, where they differ from its family's."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # The model family whose rules serve this bundle (service/families): PandaGPT unless it says otherwise.
    family: Literal["pandagpt", "videollama"] = "pandagpt"
    # Video-LLaMA's conversation template: "vicuna" (Vicuna v0, the default) or "llama2" (LLaMA-2-chat).
    template: Literal["vicuna", "llama2"] | None = None
    llm: str = "llm"
    lora: str | None = "lora"
    projector: str = "projector.safetensors"
    # ImageBind: PandaGPT's encoder of every modality; Video-LLaMA's audio branch runs on it.
    imagebind: ImageBindSpec | None = None
    videollama: VideoLlamaSpec | None = None
    # PandaGPT's end-of-turn token ids in this tokenizer (`##` inside "\n###", 2277 for LLaMA).
    # Video-LLaMA's stops are pieces its family finds in the tokenizer: none listed here.
    stop_token_ids: list[int] = Field(default_factory=list)
    generation: GenerationOverrides = GenerationOverrides()
    modalities: list[str] = Field(default_factory=lambda: list(MODALITIES))

    @field_validator("modalities")
    @classmethod
    def known_modalities(cls, names: list[str]) -> list[str]:
        unknown = sorted(set(names) - set(MODALITIES))
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; known: {list(MODALITIES)}")
        return names

    @model_validator(mode="after")
    def fits_the_family(self) -> Manifest:
        if self.family == "pandagpt":
            if self.imagebind is None or self.videollama is not None:
                raise ValueError("a pandagpt bundle names its imagebind checkpoint and no videollama encoders")
            if not self.stop_token_ids:
                raise ValueError("a pandagpt bundle lists its stop_token_ids (the id of `##`)")
            if self.template is not None:
                raise ValueError("template is Video-LLaMA's choice; PandaGPT has one template")
        elif self.lora is not None or self.stop_token_ids:
            raise ValueError("a videollama bundle has no LoRA adapter and no stop_token_ids (lora: null)")
        elif self.videollama is not None and (self.videollama.audio is None) != (self.imagebind is None):
            raise ValueError("a videollama bundle's audio branch and its imagebind checkpoint come together")
        return self


class Bundle(BaseModel):
    """A manifest with its paths resolved against the bundle directory."""

    root: Path
    manifest: Manifest

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    @property
    def llm_dir(self) -> Path:
        return self.path(self.manifest.llm)

    @property
    def lora_dir(self) -> Path | None:
        return self.path(self.manifest.lora) if self.manifest.lora else None

    @property
    def projector_path(self) -> Path:
        return self.path(self.manifest.projector)

    @property
    def imagebind(self) -> ImageBindSpec:
        if self.manifest.imagebind is None:
            raise ValueError(f"the bundle at {self.root} has no ImageBind checkpoint")
        return self.manifest.imagebind

    @property
    def imagebind_path(self) -> Path:
        return self.path(self.imagebind.checkpoint)

    @property
    def tokenizer_path(self) -> Path:
        return self.llm_dir / "tokenizer.model"


def load_bundle(root: str | Path) -> Bundle:
    root = Path(root).resolve()
    manifest = Manifest.model_validate(json.loads((root / MANIFEST).read_text()))
    return Bundle(root=root, manifest=manifest)


def write_manifest(root: Path, manifest: Manifest) -> None:
    data = manifest.model_dump(mode="json", exclude_none=True)
    if manifest.lora is None:
        data["lora"] = None  # null says "no adapter" (left out, the field would read as "lora")
    (root / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
