"""The bundle's parts loaded in the benchmark's own process, for the runs that bypass the server:
the original path, the direct engine and the encoder pool. The same code the service runs
(ImageBind, decoders, projector, the family's template and stop rule, prompt assembly), so the
three see the same numbers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.workload import Media
from encoders.imagebind import ImageBindConfig, ImageBindModel, load_imagebind
from encoders.limits import MediaLimits
from encoders.modalities import MODALITIES
from encoders.projector import Projector, load_projector
from service.bundle import Bundle, load_bundle
from service.core.prompt import PromptAssembler
from service.core.reply import StopScanner
from service.engines.base import Sampling
from service.families import generation_defaults, load_family
from service.families.base import Exchange, Family, Medium


@dataclass
class Parts:
    bundle: Bundle
    family: Family
    imagebind: ImageBindModel
    projector: Projector
    prompts: PromptAssembler
    limits: MediaLimits

    @classmethod
    def load(cls, bundle_dir: Path) -> Parts:
        bundle = load_bundle(bundle_dir)
        config = ImageBindConfig(**bundle.imagebind.config)
        return cls(
            bundle=bundle,
            family=load_family(bundle),
            imagebind=load_imagebind(bundle.imagebind_path, config),
            projector=load_projector(bundle.projector_path),
            prompts=PromptAssembler.load(bundle.llm_dir),
            limits=MediaLimits(),
        )

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return self.family.stop_rule.engine_stop_ids()

    def sampling(self, max_tokens: int) -> Sampling:
        """What the service sends the engine for a request with temperature=0 (greedy) and `max_tokens`."""
        gen = generation_defaults(self.family, self.bundle)
        return Sampling(max_tokens, 0.0, gen.top_p, gen.top_k, None, self.stop_ids)

    @torch.inference_mode()
    def embed_one(self, item: Media) -> torch.Tensor:
        """Decode and embed one file on its own (batch of 1), as the original demo did."""
        modality = MODALITIES[item.modality]
        array = modality.load(item.data, item.modality, self.limits)
        return self.imagebind({modality.branch: torch.from_numpy(array)[None]})[modality.branch][0]

    @torch.inference_mode()
    def media_rows(self, modalities: Sequence[str], embeddings: Sequence[torch.Tensor]) -> list[Medium]:
        """Each medium with its soft-prompt vectors, as the service projects them (PandaGPT sums
        every turn's media into one slot: the turn each came with does not matter)."""
        rows = self.projector(torch.stack(list(embeddings)))[:, None]
        return [Medium(modality, vectors) for modality, vectors in zip(modalities, rows, strict=True)]

    def prompt(self, history: Sequence[Exchange], message: str, media: Sequence[Medium]) -> torch.Tensor:
        return self.prompts.assemble(self.family.prompt(history, message, media))

    def reply_text(self, token_ids: Sequence[int]) -> str:
        """The reply as the service returns it (the family's stop rule), to build a second turn's history."""
        tokens: StopScanner[None] = StopScanner(self.family.stop_rule)
        for token in token_ids:
            if tokens.push(token, None):
                break
        return self.family.tokenizer.decode([t for t, _ in tokens.finish()])
