"""A stock vLLM OpenAI server as the engine: prompt embeddings over `/v1/completions`, streamed.

The server runs with no code of ours (`pandaserve engine command` prints its command line). The
prompt travels whole, as `torch.save` of the float tensor in base64 (exact by construction); the
reply comes back as token ids (`return_token_ids`), logprobs keyed by id. A request is retried only
before its first token; closing the stream closes the connection, which vLLM answers by aborting
the request. A circuit breaker turns an engine that keeps failing into `EngineFailed` (503) at once
and `/readyz` false, and lets one request through after its cool-down to find out it is back.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import torch

from service.client.sse import aiter_events
from service.engines.base import Delta, Sampling, TokenLogprob
from service.errors import BadRequest, EngineFailed

# vllm-router's consistent_hash policy keys its choice of engine on the first of these headers it
# finds: x-session-id, x-user-id, x-tenant-id, x-correlation-id, x-request-id, x-trace-id (then a
# few body fields, then a hash of the whole body). The session's id in the first of them keeps a
# conversation on one engine; a stock server ignores the header.
AFFINITY_HEADER = "x-session-id"


@dataclass(frozen=True)
class RemoteEngineConfig:
    url: str  # the server (or a router in front of servers), e.g. http://engine:8000
    model: str  # what requests name: the bundle's LoRA adapter, or the served model without one
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 120.0  # the longest wait for the next chunk (a long prefill included)
    retries: int = 2  # before the first token only
    breaker_failures: int = 3  # consecutive failures that open the breaker
    breaker_cooldown_s: float = 5.0


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float) -> None:
        self.failures, self.cooldown_s = failures, cooldown_s
        self.consecutive = 0
        self.opened_at: float | None = None

    def check(self) -> None:
        """Raise while open; after the cool-down, let requests try again (half open)."""
        if self.opened_at is not None and time.monotonic() - self.opened_at < self.cooldown_s:
            raise EngineFailed("the inference engine is unavailable; retry shortly")

    def succeeded(self) -> None:
        self.consecutive, self.opened_at = 0, None

    def failed(self) -> None:
        self.consecutive += 1
        if self.consecutive >= self.failures:
            self.opened_at = time.monotonic()


def encode_prompt(prompt_embeds: torch.Tensor) -> str:
    """What vLLM's `prompt_embeds` takes: base64 of `torch.save` of a [L, hidden] tensor."""
    buf = io.BytesIO()
    torch.save(prompt_embeds.detach().contiguous().cpu(), buf)
    return base64.b64encode(buf.getvalue()).decode()


def token_id(token: str) -> int:
    """vLLM names logprob tokens "token_id:N" with `return_tokens_as_token_ids`."""
    return int(token.removeprefix("token_id:"))


def token_logprobs(logprobs: Mapping[str, Any] | None) -> list[TokenLogprob] | None:
    if not logprobs:
        return None
    out = []
    for token, value, top in zip(logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        ranked = sorted(((token_id(t), lp) for t, lp in (top or {}).items()), key=lambda item: -item[1])
        out.append(TokenLogprob(token_id(token), value, ranked))
    return out


class RemoteVLLMEngine:
    def __init__(self, config: RemoteEngineConfig, max_model_len: int, client: httpx.AsyncClient) -> None:
        self.config = config
        self.max_model_len = max_model_len
        self.client = client
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_cooldown_s)

    @classmethod
    async def connect(cls, config: RemoteEngineConfig, wait_s: float = 0.0) -> RemoteVLLMEngine:
        """Find the model on the server (its context length comes from there), waiting up to `wait_s`
        for the server to answer (in a deployment the API may start first)."""
        timeout = httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s)
        client = httpx.AsyncClient(base_url=config.url, timeout=timeout, trust_env=False)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                models = (await client.get("/v1/models")).raise_for_status().json()["data"]
                break
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                if time.monotonic() < deadline:
                    await asyncio.sleep(1.0)
                    continue
                await client.aclose()
                raise EngineFailed(f"the inference engine at {config.url} did not answer /v1/models ({exc})") from exc
        cards = {m["id"]: m for m in models}
        if config.model not in cards:
            await client.aclose()
            raise EngineFailed(f"the inference engine at {config.url} serves {sorted(cards)}, not {config.model!r}")
        # An adapter's card carries no context length of its own: the base model's is the one.
        max_len = cards[config.model].get("max_model_len") or max(m.get("max_model_len") or 0 for m in models)
        return cls(config, int(max_len), client)

    def _body(self, prompt_embeds: torch.Tensor, sampling: Sampling) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.config.model,
            # vllm-router reads the body as OpenAI's completion request, which needs `prompt`; vLLM
            # reads an empty list as no text prompt (an empty string would be a second prompt: a
            # second choice), so the embeddings stay the only prompt, with or without a router.
            "prompt": [],
            "prompt_embeds": encode_prompt(prompt_embeds),
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "stop_token_ids": list(sampling.stop_token_ids),
            "stream": True,
            "return_token_ids": True,
            "skip_special_tokens": False,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.logprobs is not None:
            body |= {"logprobs": sampling.logprobs, "return_tokens_as_token_ids": True}
        return body

    async def generate(
        self,
        request_id: str,
        prompt_embeds: torch.Tensor,
        sampling: Sampling,
        affinity: str | None = None,
        cache_salt: str | None = None,
        adapter: bool = True,
    ) -> AsyncGenerator[Delta, None]:
        body = self._body(prompt_embeds, sampling) | {"request_id": request_id}
        if cache_salt is not None:
            body["cache_salt"] = cache_salt
        headers = {AFFINITY_HEADER: affinity} if affinity else {}
        started = False
        for attempt in range(self.config.retries + 1):
            self.breaker.check()
            try:
                async with self.client.stream("POST", "/v1/completions", json=body, headers=headers) as response:
                    if response.status_code == 400:
                        message = _message(await response.aread())
                        raise BadRequest(f"the inference engine refused the request: {message}")
                    if response.status_code != 200:
                        raise EngineFailed(f"the inference engine answered HTTP {response.status_code}")
                    async for chunk in _events(response):
                        started = True
                        choice = chunk["choices"][0]
                        yield Delta(
                            list(choice.get("token_ids") or []),
                            choice.get("finish_reason"),
                            token_logprobs(choice.get("logprobs")) if sampling.logprobs is not None else None,
                        )
                self.breaker.succeeded()
                return
            except (httpx.HTTPError, EngineFailed) as exc:
                self.breaker.failed()
                if started or attempt == self.config.retries:
                    raise (
                        exc
                        if isinstance(exc, EngineFailed)
                        else EngineFailed(f"the inference engine failed ({type(exc).__name__}); retry later")
                    ) from exc
                await asyncio.sleep(0.1 * 2**attempt)

    async def check_health(self) -> None:
        self.breaker.check()
        try:
            (await self.client.get("/health")).raise_for_status()
        except httpx.HTTPError as exc:
            raise EngineFailed(f"the inference engine at {self.config.url} is not healthy ({exc})") from exc

    async def close(self) -> None:
        await self.client.aclose()


async def _events(response: httpx.Response) -> AsyncGenerator[dict[str, Any], None]:
    """The JSON chunks of an OpenAI-style SSE stream, up to `[DONE]` (parsed by the repo's one SSE parser)."""
    async for event in aiter_events(response.aiter_lines()):
        if event.data == "[DONE]":
            return
        chunk = json.loads(event.data)
        if "error" in chunk:
            raise EngineFailed(f"the inference engine failed mid-stream: {_message(event.data.encode())}")
        yield chunk


def _message(body: bytes) -> str:
    try:
        error = json.loads(body).get("error", {})
        return str(error.get("message") if isinstance(error, dict) else error)[:300]
    except (ValueError, AttributeError):
        return body[:300].decode("utf-8", "replace")
