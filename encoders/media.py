"""The encoder seam: what a request hands the encoders (`MediaInput`) and what answers (`Encoder`).

The in-process ImageBind pool (encoders/pool.py) is an `Embedder`: files in, ImageBind embeddings
out. The chat core sees an `Encoder`, which also answers each file's soft prompt (what the LLM's
media slots hold): PandaGPT's pool behind its projector (encoders/projector.py), Video-LLaMA's
branches (encoders/videollama/pool.py), a client of a remote encoder service, or a test's fake.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from functools import cached_property
from hashlib import sha256
from typing import Protocol

import numpy as np
import torch

# How a tenant travels to the encoder service (`pandaserve encoders serve`), which trusts its callers:
# the API replicas, behind the network policy.
TENANT_HEADER = "x-pandaserve-tenant"


@dataclass(frozen=True)
class MediaInput:
    modality: str
    data: bytes
    field: str  # the upload's name in the request, e.g. "image[0]", for error messages
    # Who sent it (the API key's tenant; None when auth is off): the embedding cache is kept per
    # tenant, and no tenant may hold more than its share of the pool's queues.
    tenant: str | None = None

    @cached_property
    def sha256(self) -> str:
        return sha256(self.data).hexdigest()


@dataclass(frozen=True)
class SoftPrompt:
    """One file in the LLM's input space: the vectors of its media slot, and what Video-LLaMA adds."""

    vectors: torch.Tensor  # [n, hidden]
    # Video-LLaMA, a video: its sound through the audio branch [8, hidden], a slot of its own; None
    # when the video has no usable audio track or the bundle no audio branch.
    audio_track: torch.Tensor | None = None
    # Video-LLaMA, a video: the sentence that says when each sampled frame was taken.
    timestamps: str = ""


def tensor_to_base64(tensor: torch.Tensor) -> str:
    """A tensor's values as they travel and are stored: float32 little-endian, row-major, base64."""
    return base64.b64encode(tensor.detach().to(torch.float32).numpy().astype("<f4").tobytes()).decode()


def tensor_from_base64(data: str, shape: tuple[int, ...] = (-1,)) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(base64.b64decode(data), dtype="<f4").copy()).reshape(shape)


class Embedder(Protocol):
    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        """One ImageBind embedding (1024,) per item, in order; a bad file raises its MediaError
        (naming `field`), a full queue PoolFull; a model with no ImageBind embeddings to give
        (Video-LLaMA) raises UnsupportedMediaType naming the first file."""
        ...

    async def check_health(self) -> None:
        """Raise if the encoders cannot serve."""
        ...

    async def close(self) -> None: ...


class Encoder(Embedder, Protocol):
    async def soft_prompts(self, items: list[MediaInput]) -> list[SoftPrompt]:
        """One soft prompt per item, in order. Errors as `encode`."""
        ...
