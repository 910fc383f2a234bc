"""The encoder pool: bytes of any modality -> ImageBind embedding, in LitServe's shape.

decode (CPU, off the event loop) -> batch (per modality) -> predict (one forward on the device)
-> unbatch. One code path for one file or many. Micro-batching across concurrent requests
is a later step; today one forward runs at a time, guarded by a lock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from encoders.errors import UnsupportedMediaType
from encoders.imagebind import ImageBindModel
from encoders.limits import MediaLimits
from encoders.modalities import MODALITIES


class PoolObserver(Protocol):
    """Where the pool reports its timings (the service's metrics)."""

    def decoded(self, modality: str, seconds: float) -> None: ...

    def encoded(self, modality: str, seconds: float, batch_size: int, waited: float) -> None: ...


class _Unobserved:
    def decoded(self, modality: str, seconds: float) -> None:
        return None

    def encoded(self, modality: str, seconds: float, batch_size: int, waited: float) -> None:
        return None


@dataclass(frozen=True)
class MediaInput:
    modality: str
    data: bytes
    field: str  # the upload's name in the request, e.g. "image[0]", for error messages


class EncoderPool:
    def __init__(
        self,
        model: ImageBindModel,
        limits: MediaLimits,
        modalities: Iterable[str],
        device: str = "cpu",
        observer: PoolObserver | None = None,
    ) -> None:
        self.model = model
        self.observer = observer or _Unobserved()
        self.limits = limits
        self.modalities = [m for m in MODALITIES if m in set(modalities)]
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self._device_lock = asyncio.Lock()

    def decode(self, item: MediaInput) -> np.ndarray:
        if item.modality not in self.modalities:
            raise UnsupportedMediaType(item.field, f"this model does not serve {item.modality}")
        started = time.perf_counter()
        array = MODALITIES[item.modality].load(item.data, item.field, self.limits)
        self.observer.decoded(item.modality, time.perf_counter() - started)
        return array

    @torch.inference_mode()
    def predict(self, modality: str, batch: np.ndarray) -> torch.Tensor:
        branch = MODALITIES[modality].branch
        x = torch.from_numpy(batch).to(self.device, self.dtype)
        return self.model({branch: x})[branch].float().cpu()

    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        """Embeddings (out_dim,) in the order of `items`; the first bad file raises its MediaError."""
        arrays = await asyncio.gather(*(asyncio.to_thread(self.decode, item) for item in items))
        embeddings: list[torch.Tensor | None] = [None] * len(items)
        for modality in dict.fromkeys(item.modality for item in items):
            index = [i for i, item in enumerate(items) if item.modality == modality]
            batch = np.stack([arrays[i] for i in index])
            waiting = time.perf_counter()
            async with self._device_lock:
                started = time.perf_counter()
                out = await asyncio.to_thread(self.predict, modality, batch)
            self.observer.encoded(modality, time.perf_counter() - started, len(index), started - waiting)
            for i, row in zip(index, out, strict=True):
                embeddings[i] = row
        return [e for e in embeddings if e is not None]
