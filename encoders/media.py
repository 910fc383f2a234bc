"""The encoder seam: what a request hands the encoders (`MediaInput`) and what answers (`Encoder`).

The chat core sees only this protocol: the in-process pool (encoders/pool.py) implements it, and so
can a client of a remote encoder service or a test's fake.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cached_property
from hashlib import sha256
from typing import Protocol

import numpy as np
import torch


@dataclass(frozen=True)
class MediaInput:
    modality: str
    data: bytes
    field: str  # the upload's name in the request, e.g. "image[0]", for error messages

    @cached_property
    def sha256(self) -> str:
        return sha256(self.data).hexdigest()


def embedding_to_base64(embedding: torch.Tensor) -> str:
    """An embedding as it travels and is stored: float32 little-endian, base64."""
    return base64.b64encode(embedding.detach().to(torch.float32).numpy().astype("<f4").tobytes()).decode()


def embedding_from_base64(data: str) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(data), dtype="<f4").copy())


class Encoder(Protocol):
    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        """One embedding per item, in order; a bad file raises its MediaError (naming `field`), a full
        queue PoolFull."""
        ...

    async def check_health(self) -> None:
        """Raise if the encoders cannot serve."""
        ...

    async def close(self) -> None: ...
