"""The encoder pool: bytes of any modality -> ImageBind embedding, in LitServe's shape.

decode (CPU, off the event loop) -> batch (per modality) -> predict (one forward on the device)
-> unbatch. One code path for one file or many. Micro-batching across concurrent requests
is a later step; today one forward runs at a time, guarded by a lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from encoders.errors import UnsupportedMediaType
from encoders.image import load_image
from encoders.imagebind import ImageBindModel

# Our modality name -> ImageBind branch.
BRANCH = {"image": "vision"}


@dataclass(frozen=True)
class MediaInput:
    modality: str
    data: bytes
    field: str  # the upload's name in the request, e.g. "image[0]", for error messages


class EncoderPool:
    def __init__(self, model: ImageBindModel, *, max_image_pixels: int, device: str = "cpu") -> None:
        self.model = model
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self.loaders: dict[str, Callable[[bytes, str], np.ndarray]] = {
            "image": partial(load_image, max_pixels=max_image_pixels),
        }
        self._device_lock = asyncio.Lock()

    @property
    def modalities(self) -> list[str]:
        return list(self.loaders)

    def decode(self, item: MediaInput) -> np.ndarray:
        loader = self.loaders.get(item.modality)
        if loader is None:
            raise UnsupportedMediaType(item.field, f"modality {item.modality!r} is not served")
        return loader(item.data, item.field)

    @torch.inference_mode()
    def predict(self, modality: str, batch: np.ndarray) -> torch.Tensor:
        branch = BRANCH[modality]
        x = torch.from_numpy(batch).to(self.device, self.dtype)
        return self.model({branch: x})[branch].float().cpu()

    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        """Embeddings (out_dim,) in the order of `items`; the first bad file raises its MediaError."""
        arrays = await asyncio.gather(*(asyncio.to_thread(self.decode, item) for item in items))
        embeddings: list[torch.Tensor | None] = [None] * len(items)
        for modality in dict.fromkeys(item.modality for item in items):
            index = [i for i, item in enumerate(items) if item.modality == modality]
            batch = np.stack([arrays[i] for i in index])
            async with self._device_lock:
                out = await asyncio.to_thread(self.predict, modality, batch)
            for i, row in zip(index, out, strict=True):
                embeddings[i] = row
        return [e for e in embeddings if e is not None]
