"""The in-process vLLM engine at its seam: what the stop rule and the fidelity tests rely on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from service.bundle import load_bundle
from service.core.prompt import PromptAssembler
from service.engines.base import Sampling
from service.errors import BadRequest
from service.families import load_family
from service.families.base import Medium
from service.resources import engine_config
from service.settings import Settings

# AsyncLLM's output handler lives on the event loop that first used it: one loop for the module.
pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(demo_bundle: Path) -> AsyncIterator:
    from service.engines.vllm_local import LocalVLLMEngine

    bundle = load_bundle(demo_bundle)
    e = LocalVLLMEngine.start(engine_config(bundle, load_family(bundle), Settings(kv_cache_gib=1, max_num_seqs=4)))
    yield e
    await e.close()


@pytest.fixture(scope="module")
def prompt(demo_bundle: Path) -> torch.Tensor:
    bundle = load_bundle(demo_bundle)
    prompts = PromptAssembler.load(bundle.llm_dir)
    slot = torch.linspace(-0.05, 0.05, prompts.hidden_size)[None]
    return prompts.assemble(load_family(bundle).prompt([], "Describe the picture.", [Medium("image", slot)]))


def greedy(max_tokens: int, stop: tuple[int, ...] = ()) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=-1, seed=None, stop_token_ids=stop)


async def collect(stream: AsyncIterator) -> tuple[list[int], str | None]:
    ids: list[int] = []
    reason = None
    async for delta in stream:
        ids += delta.token_ids
        reason = delta.finish_reason or reason
    return ids, reason


async def test_length_finish_streams_every_token(engine, prompt: torch.Tensor) -> None:
    ids, reason = await collect(engine.generate("len", prompt, greedy(6)))
    assert len(ids) == 6 and reason == "length"


async def test_a_stop_token_ends_generation_and_is_reported_last(engine, prompt: torch.Tensor) -> None:
    free, _ = await collect(engine.generate("free", prompt, greedy(6)))
    stop = free[3]
    first = free.index(stop)  # the stop token may already occur earlier
    ids, reason = await collect(engine.generate("stop", prompt, greedy(6, (stop,))))
    assert reason == "stop"
    assert ids == free[: first + 1]  # apply_stop_rule relies on the stop id being the last id


async def test_closing_the_stream_early_aborts_the_request(engine, prompt: torch.Tensor) -> None:
    stream = engine.generate("early", prompt, greedy(50))
    async for _ in stream:
        break
    await stream.aclose()
    assert not engine.llm.output_processor.request_states  # nothing left running in the engine
    ids, _ = await collect(engine.generate("after", prompt, greedy(3)))
    assert len(ids) == 3


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(max_tokens=4, temperature=0.0, top_p=1.0, top_k=-1, seed=None, stop_token_ids=(), logprobs=10_000),
        Sampling(max_tokens=4, temperature=-1.0, top_p=1.0, top_k=-1, seed=None, stop_token_ids=()),
    ],
    ids=["logprobs beyond the engine's maximum", "negative temperature"],
)
async def test_what_vllm_calls_the_requests_fault_is_a_bad_request(engine, prompt: torch.Tensor, sampling) -> None:
    """Before, vLLM's own validation errors reached the edge as 500s."""
    with pytest.raises(BadRequest, match="the inference engine refused the request"):
        await collect(engine.generate("refused", prompt, sampling))
    assert not engine.llm.output_processor.request_states  # nothing left behind
    ids, _ = await collect(engine.generate("after-refused", prompt, greedy(3)))
    assert len(ids) == 3
