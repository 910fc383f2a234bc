"""The bundle's parts loaded in the benchmark's own process, for the runs that bypass the server:
the original path, the direct engine and the encoder pool. The same code the service runs
(ImageBind, decoders, projector, PromptBuilder), so the three see the same numbers."""

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
from service.engines.base import Sampling
from service.prompt import PromptBuilder


@dataclass
class Parts:
    bundle: Bundle
    imagebind: ImageBindModel
    projector: Projector
    prompts: PromptBuilder
    limits: MediaLimits

    @classmethod
    def load(cls, bundle_dir: Path) -> Parts:
        bundle = load_bundle(bundle_dir)
        config = ImageBindConfig(**bundle.manifest.imagebind.config)
        return cls(
            bundle=bundle,
            imagebind=load_imagebind(bundle.imagebind_path, config),
            projector=load_projector(bundle.projector_path),
            prompts=PromptBuilder.load(bundle.tokenizer_path, bundle.llm_dir),
            limits=MediaLimits(),
        )

    @property
    def stop_ids(self) -> tuple[int, ...]:
        return tuple(self.bundle.manifest.stop_token_ids)

    def sampling(self, max_tokens: int) -> Sampling:
        """What the service sends the engine for a request with temperature=0 (greedy) and `max_tokens`."""
        gen = self.bundle.manifest.generation
        return Sampling(max_tokens, 0.0, gen.top_p, gen.top_k, None, self.stop_ids)

    @torch.inference_mode()
    def embed_one(self, item: Media) -> torch.Tensor:
        """Decode and embed one file on its own (batch of 1), as the original demo did."""
        modality = MODALITIES[item.modality]
        array = modality.load(item.data, item.modality, self.limits)
        return self.imagebind({modality.branch: torch.from_numpy(array)[None]})[modality.branch][0]

    @torch.inference_mode()
    def slot(self, embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.projector.slot(torch.stack(list(embeddings)))

    def reply_text(self, token_ids: Sequence[int]) -> str:
        """The reply as the service returns it (PandaGPT's stop rule), to build a second turn's history.

        At `##` that token and the one before it are dropped; at EOS only the EOS.
        """
        ids = list(token_ids)
        for k, token in enumerate(ids):
            if token in self.stop_ids:
                ids = ids[: max(k - 1, 0)]
                break
            if token == self.prompts.eos_id:
                ids = ids[:k]
                break
        return self.prompts.decode(ids)
