"""Tenants: API keys from settings, sent as `Authorization: Bearer <key>`.

A tenant is known by its key's id (a hash), never by the key itself; sessions record that id.
With no keys configured, auth is off: allowed only for the embedded default (sessions in
memory), never when sessions live in a shared Redis.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from service.errors import Unauthorized


def read_keys(inline: str, file: Path | None) -> list[str]:
    """Comma-separated keys, plus one key per line of a mounted file (blank lines and # comments skipped)."""
    keys = [k.strip() for k in inline.split(",") if k.strip()]
    if file is not None:
        lines = (line.strip() for line in file.read_text().splitlines())
        keys += [line for line in lines if line and not line.startswith("#")]
    return keys


class ApiKeys:
    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def tenant(self, authorization: str | None) -> str | None:
        """The tenant (its key's id) for an Authorization header (None when auth is off); Unauthorized otherwise."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send an API key as `Authorization: Bearer <key>`")
        given = token.strip().encode()
        match = None
        for key in self._keys:  # every key compared in constant time, no early exit: timing leaks nothing
            if hmac.compare_digest(key, given):
                match = key
        if match is None:
            raise Unauthorized("invalid API key")
        return "key_" + hashlib.sha256(match).hexdigest()[:16]
