"""Frozen ImageBind features, computed once and cached on disk.

PandaGPT's ImageBind is frozen and in eval mode (no dropout, no drop path), so an image's
embedding is the same at every step and every epoch: the original re-encoded each image at every
step; we encode each distinct image once, with the service's own encoder pool (the same decoding,
preprocessing and model as `pandaserve serve`), and training reads the cache.

Layout: `<cache_root>/<namespace>/image-v<N>/shard-<k>.safetensors`, each shard a map
sha256-of-the-file's-bytes -> float32 [out_dim] embedding. The namespace is the serving cache's
(the ImageBind checkpoint's digest and the media limits), and N the image preprocessing version,
so another checkpoint or a change to preprocessing never reads stale features. Shards are only
ever added (written to a temp file, then renamed), so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from encoders.cache import PREPROCESSING_VERSION, namespace
from encoders.imagebind import ImageBindConfig, ImageBindModel, load_imagebind
from encoders.limits import MediaLimits
from encoders.media import MediaInput
from encoders.pool import Batching, EncoderPool

MODALITY = "image"
CHUNK = 64  # files read and in flight at once, and encoded in one forward
SHARD_SIZE = 4096  # embeddings per shard (16 MiB at 1024-d float32)


@dataclass(frozen=True)
class FeatureStats:
    images: int  # distinct image files (by content)
    encoded: int  # of which encoded now; the rest were cached


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class FeatureCache:
    """The shards of one (checkpoint, limits, preprocessing version)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._where: dict[str, Path] = {}  # sha256 -> shard; read from the shards' headers only
        for shard in sorted(directory.glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                self._where.update(dict.fromkeys(f.keys(), shard))

    @classmethod
    def for_checkpoint(cls, cache_root: Path, imagebind: Path, limits: MediaLimits) -> FeatureCache:
        return cls(
            Path(cache_root) / namespace([str(imagebind)], limits) / f"{MODALITY}-v{PREPROCESSING_VERSION[MODALITY]}"
        )

    def __contains__(self, sha: str) -> bool:
        return sha in self._where

    def add(self, embeddings: dict[str, torch.Tensor]) -> None:
        """Write one new shard atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        shard = self.directory / f"shard-{len(list(self.directory.glob('shard-*.safetensors'))):06d}.safetensors"
        tmp = shard.with_name(shard.name + f".{os.getpid()}.tmp")
        save_file({k: v.float().contiguous() for k, v in embeddings.items()}, str(tmp))
        tmp.rename(shard)
        self._where.update(dict.fromkeys(embeddings, shard))

    def load(self, shas: Sequence[str]) -> torch.Tensor:
        """[len(shas), out_dim] float32, in the order given; every sha must be cached."""
        missing = [s for s in shas if s not in self._where]
        if missing:
            raise KeyError(f"{len(missing)} images are not in the feature cache {self.directory}, e.g. {missing[0]}")
        wanted: dict[Path, list[str]] = {}
        for sha in set(shas):
            wanted.setdefault(self._where[sha], []).append(sha)
        found: dict[str, torch.Tensor] = {}
        for shard, keys in wanted.items():
            with safe_open(str(shard), framework="pt") as f:
                found.update({k: f.get_tensor(k) for k in keys})
        return torch.stack([found[s] for s in shas])


def compute_features(
    images: Sequence[Path],
    imagebind: Path,
    config: ImageBindConfig,
    cache_root: Path,
    *,
    limits: MediaLimits | None = None,
    device: str | None = None,
    decode_workers: int = 2,
    progress: bool = True,
) -> tuple[torch.Tensor, FeatureStats]:
    """The embeddings of `images` ([N, out_dim] float32, in order), encoding only what the cache lacks."""
    limits = limits or MediaLimits()
    cache = FeatureCache.for_checkpoint(cache_root, imagebind, limits)
    shas = [file_sha256(p) for p in tqdm(images, "hashing images", disable=not progress, unit="file")]
    todo = {sha: path for sha, path in zip(shas, images, strict=True) if sha not in cache}
    if todo:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # As the service: fp16 on a GPU (PandaGPT ran ImageBind in fp16), fp32 on CPU.
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model = load_imagebind(imagebind, config, device, dtype)
        asyncio.run(_encode_into(cache, list(todo.items()), model, limits, device, decode_workers, progress))
    return cache.load(shas), FeatureStats(images=len(set(shas)), encoded=len(todo))


async def _encode_into(
    cache: FeatureCache,
    todo: list[tuple[str, Path]],
    model: ImageBindModel,
    limits: MediaLimits,
    device: str,
    decode_workers: int,
    progress: bool,
) -> None:
    # One forward per chunk, always of the same files: a batch closes only when the chunk's files are
    # all decoded, never on a timer. Batches that formed as decoding happened to finish made the
    # features differ in their last bits from build to build, and the demo's vision features (then
    # whitened by demo_vision) amplified such differences: the same recipe taught the demo shapes at
    # 67% or 75% by chance.
    batching = Batching(max_batch_size=CHUNK, max_wait_ms=60_000, decode_workers=decode_workers, max_decode_queue=CHUNK)
    pool = EncoderPool(model, limits, [MODALITY], batching=batching, device=device)
    pending: dict[str, torch.Tensor] = {}
    bar = tqdm(total=len(todo), desc="encoding images", disable=not progress, unit="file")
    try:
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            # The field names the file, so a bad image's MediaError says which one.
            items = [MediaInput(MODALITY, path.read_bytes(), str(path)) for _, path in chunk]
            for (sha, _), embedding in zip(chunk, await pool.encode(items), strict=True):
                pending[sha] = embedding
            bar.update(len(chunk))
            if len(pending) >= SHARD_SIZE:
                cache.add(pending)
                pending = {}
        if pending:
            cache.add(pending)
    finally:
        bar.close()
        await pool.close()
