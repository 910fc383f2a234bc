"""The embedding cache: a file seen before is neither decoded nor encoded again.

Key: (the encoders' checkpoint digests and media limits, tenant, modality, preprocessing version, sha256
of the bytes), so a new checkpoint or a change to a modality's preprocessing never serves a stale
embedding, and a hit never admits a file that the current limits refuse. Per tenant: a hit is
faster than a miss, so a shared entry would tell one tenant that another uploaded the same file;
each tenant encodes its own copy instead (with auth off every caller is one tenant). Two tiers: an
in-process LRU bounded in bytes, in front of a shared store (Redis, with a TTL) that every replica
reads. The shared tier is an optimisation: when it fails, the cache misses and the file is encoded.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

from encoders.limits import MediaLimits

log = logging.getLogger(__name__)

# Bump a modality's number whenever its decoding or preprocessing changes what reaches ImageBind.
PREPROCESSING_VERSION = {"image": 1, "audio": 1, "video": 1, "thermal": 1, "depth": 1, "imu": 1}


class SharedStore(Protocol):
    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...


class CacheObserver(Protocol):
    def cache_lookup(self, tier: str, hit: bool) -> None: ...


def namespace(checkpoint_paths: Sequence[str], limits: MediaLimits) -> str:
    """What entries are shared under: the checkpoints' content (not their paths, so replicas with the
    same weights share) and the limits the files were admitted under."""
    digests = []
    for path in checkpoint_paths:
        with open(path, "rb") as f:
            digests.append(hashlib.file_digest(f, "sha256").hexdigest())
    return hashlib.sha256(f"{':'.join(digests)}:{limits!r}".encode()).hexdigest()[:16]


class EmbeddingCache:
    """Entries are bytes: the pool's model says how its results are written (encoders/pool.py)."""

    def __init__(self, namespace: str, max_bytes: int, shared: SharedStore | None, observer: CacheObserver) -> None:
        self.namespace = namespace
        self.max_bytes = max_bytes
        self.shared = shared
        self.observer = observer
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0

    def key(self, tenant: str | None, modality: str, sha256: str) -> str:
        """`sha256`: the hex digest of the file's bytes. The tenant's name is hashed: keys in the shared
        store should not list the tenants."""
        owner = "-" if tenant is None else hashlib.sha256(tenant.encode()).hexdigest()[:16]
        version = PREPROCESSING_VERSION[modality]
        return f"pandaserve:emb:{self.namespace}:{owner}:{modality}:v{version}:{sha256}"

    async def get(self, key: str) -> bytes | None:
        """The entry's bytes, as the pool's model encoded them."""
        value = self._lru.get(key)
        self.observer.cache_lookup("memory", value is not None)
        if value is not None:
            self._lru.move_to_end(key)
            return value
        if self.shared is None:
            return None
        try:
            value = await self.shared.get(key)
        except Exception as exc:  # the shared tier is optional: a miss, never a failed request
            log.warning("embedding cache: shared store read failed (%s); encoding instead", exc)
            value = None
        self.observer.cache_lookup("shared", value is not None)
        if value is None:
            return None
        self._remember(key, value)
        return value

    async def put(self, key: str, value: bytes) -> None:
        self._remember(key, value)
        if self.shared is not None:
            try:
                await self.shared.set(key, value)
            except Exception as exc:
                log.warning("embedding cache: shared store write failed (%s)", exc)

    def _remember(self, key: str, value: bytes) -> None:
        if key in self._lru:
            self._lru.move_to_end(key)
            return
        self._lru[key] = value
        self._bytes += len(key) + len(value)
        while self._bytes > self.max_bytes and self._lru:
            old_key, old = self._lru.popitem(last=False)
            self._bytes -= len(old_key) + len(old)
