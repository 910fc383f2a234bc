"""The remote engine's pure parts: the circuit breaker, vLLM's logprobs by token id, the prompt's encoding."""

from __future__ import annotations

import base64
import io
import time

import pytest
import torch

from service.engines.vllm_remote import CircuitBreaker, encode_prompt, token_logprobs
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
