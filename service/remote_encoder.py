"""The encoder seam over HTTP: a client of the encoder service (`pandaserve encoders serve`), so an
API replica loads no ImageBind. A bad file is still the caller's 4xx naming its field (the service
names each file by the filename it was sent under, and this client sends the caller's field
names); a full pool is PoolFull (503 + Retry-After); a service that cannot answer is 503. The
caller's tenant travels as a header: the service keeps its cache and its queue shares per tenant."""

from __future__ import annotations

import asyncio

import httpx
import torch

from encoders.errors import InvalidMedia, MediaError, MediaTooLarge, PoolFull, UnsupportedMediaType
from encoders.media import TENANT_HEADER, MediaInput, SoftPrompt, tensor_from_base64
from service.errors import EncoderUnavailable

MEDIA_ERRORS: dict[str, type[MediaError]] = {
    "payload_too_large_error": MediaTooLarge,
    "unsupported_media_type_error": UnsupportedMediaType,
    "invalid_media_error": InvalidMedia,
}


class RemoteEncoder:
    def __init__(self, url: str, timeout_s: float = 300.0, max_concurrency: int = 64) -> None:
        self.url = url
        self.client = httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(timeout_s, connect=5.0), trust_env=False)
        self._slots = asyncio.Semaphore(max_concurrency)  # requests in flight to the service

    async def encode(self, items: list[MediaInput]) -> list[torch.Tensor]:
        return [file.vectors for file in await self._post(items, "embedding")]

    async def soft_prompts(self, items: list[MediaInput]) -> list[SoftPrompt]:
        return await self._post(items, "soft_prompt")

    async def _post(self, items: list[MediaInput], output: str) -> list[SoftPrompt]:
        files = [(item.modality, (item.field, item.data, "application/octet-stream")) for item in items]
        tenant = items[0].tenant if items else None  # one request's files are one tenant's
        headers = {TENANT_HEADER: tenant} if tenant is not None else {}
        try:
            async with self._slots:
                response = await self.client.post("/v1/encode", params={"output": output}, files=files, headers=headers)
        except httpx.HTTPError as exc:
            raise EncoderUnavailable(
                f"the encoder service at {self.url} is unavailable ({type(exc).__name__})"
            ) from exc
        if response.status_code != 200:
            raise _error(response)
        return [_soft_prompt(file) for file in response.json()["data"]]

    async def check_health(self) -> None:
        try:
            (await self.client.get("/readyz")).raise_for_status()
        except httpx.HTTPError as exc:
            raise EncoderUnavailable(f"the encoder service at {self.url} is not ready ({exc})") from exc

    async def close(self) -> None:
        await self.client.aclose()


def _tensor(encoded: dict) -> torch.Tensor:
    return tensor_from_base64(encoded["data"], tuple(encoded["shape"]))


def _soft_prompt(file: dict) -> SoftPrompt:
    track = file.get("audio_track")
    return SoftPrompt(_tensor(file), None if track is None else _tensor(track), file.get("timestamps", ""))


def _error(response: httpx.Response) -> Exception:
    """The service's error as the exception it was raised as there."""
    try:
        error = response.json()["error"]
        kind, message = error["type"], error["message"]
    except (ValueError, KeyError, TypeError):
        return EncoderUnavailable(f"the encoder service answered HTTP {response.status_code}")
    if kind in MEDIA_ERRORS:
        field, _, problem = message.partition(": ")  # MediaError's message is "<field>: <problem>"
        return MEDIA_ERRORS[kind](field, problem)
    if kind == "overloaded_error":
        return PoolFull(message)
    return EncoderUnavailable(f"the encoder service failed: {message}")
