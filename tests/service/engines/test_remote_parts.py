"""The remote engine's pure parts: the circuit breaker, vLLM's logprobs by token id, the prompt's encoding, the request
it sends (a mock server: what a router reads of it)."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import pytest
import torch

from service.engines.base import Sampling
from service.engines.vllm_remote import (
    CircuitBreaker,
    RemoteEngineConfig,
    RemoteVLLMEngine,
    encode_prompt,
    token_logprobs,
)
from service.errors import EngineFailed

pytestmark = pytest.mark.unit


def test_the_breaker_opens_after_consecutive_failures_and_half_opens_after_its_cooldown() -> None:
    breaker = CircuitBreaker(failures=2, cooldown_s=0.05)
    breaker.failed()
    breaker.check()  # one failure: still closed
    breaker.failed()
    with pytest.raises(EngineFailed):
        breaker.check()
    time.sleep(0.06)
    breaker.check()  # half open: a request may try
    breaker.succeeded()
    breaker.failed()
    breaker.check()  # a success reset the count


def test_logprobs_come_back_keyed_by_token_id_most_likely_first() -> None:
    vllm = {
        "tokens": ["token_id:5", "token_id:9"],
        "token_logprobs": [-0.1, -2.0],
        "top_logprobs": [{"token_id:5": -0.1, "token_id:7": -3.0}, {"token_id:3": -0.5, "token_id:9": -2.0}],
    }
    first, second = token_logprobs(vllm) or []
    assert (first.token_id, first.logprob, first.top) == (5, -0.1, [(5, -0.1), (7, -3.0)])
    assert (second.token_id, second.top) == (9, [(3, -0.5), (9, -2.0)])
    assert token_logprobs(None) is None


def test_the_prompt_travels_exactly() -> None:
    prompt = torch.randn(7, 16)
    back = torch.load(io.BytesIO(base64.b64decode(encode_prompt(prompt))), weights_only=True)
    assert torch.equal(back, prompt)


async def test_a_turn_names_its_session_for_the_router_and_sends_no_text_prompt() -> None:
    """vllm-router keys consistent hashing on `x-session-id`, and reads the body as OpenAI's completion
    request, which needs `prompt`: an empty list, which vLLM reads as no text prompt."""
    seen: list[httpx.Request] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        chunk = {"choices": [{"token_ids": [5], "finish_reason": "length"}]}
        return httpx.Response(200, text=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n")

    client = httpx.AsyncClient(transport=httpx.MockTransport(server), base_url="http://router")
    engine = RemoteVLLMEngine(RemoteEngineConfig("http://router", "adapter"), 2048, client)
    sampling = Sampling(1, 0.0, 1.0, -1, None, ())
    for affinity in ("sess_1", None):
        assert [d.token_ids async for d in engine.generate("r", torch.zeros(3, 4), sampling, affinity)] == [[5]]
    await engine.close()
    keyed, plain = seen
    assert keyed.headers["x-session-id"] == "sess_1" and "x-session-id" not in plain.headers
    body = json.loads(keyed.content)
    assert body["prompt"] == [] and body["model"] == "adapter" and body["prompt_embeds"]
