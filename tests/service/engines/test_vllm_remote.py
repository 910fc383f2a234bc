"""The engine as a stock vLLM OpenAI server (started with the command `pandaserve engine command`
prints, no code of ours inside it): the API with PANDASERVE_ENGINE_URL gives exactly the replies of
HF + PEFT; the LoRA layers are restricted as in-process (vLLM bug #51122); a closed stream aborts
the server's request; a dead engine is 503 and readyz false, and the API recovers by itself."""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import torch

from benchmarks.server import Server, stock_engine
from service.bundle import load_bundle
from service.core.prompt import PromptAssembler
from service.engines.base import Sampling
from service.engines.vllm_remote import RemoteEngineConfig, RemoteVLLMEngine
from service.engines.vllm_settings import ADAPTER
from service.families import load_family
from service.families.base import Medium
from tests.conftest import RunningServer, engine_killed, running_server
from tests.media import valid
from tests.oracle import Oracle, assert_served_chat_equals

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def engine(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with stock_engine(demo_bundle, tmp_path_factory.mktemp("engine")) as running:
        yield running


@pytest.fixture(scope="module")
def api(
    engine: Server, demo_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {"PANDASERVE_ENGINE_URL": engine.url}
    with running_server(demo_bundle, redis_url, tmp_path_factory.mktemp("api"), env) as running:
        yield running


def prompts(demo_bundle: Path, count: int) -> list[torch.Tensor]:
    bundle = load_bundle(demo_bundle)
    family, table = load_family(bundle), PromptAssembler.load(bundle.llm_dir)
    return [
        table.assemble(
            family.prompt(
                [], "Describe the picture " * (1 + i % 3), [Medium("image", torch.randn(1, table.hidden_size) * 0.1)]
            )
        )
        for i in range(count)
    ]


def test_the_printed_command_is_the_stock_server_with_the_adapter_on_restricted_layers(
    engine: Server, demo_bundle: Path
) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "pandaserve", "engine", "command", "--bundle", str(demo_bundle), "--device", "cpu"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    words = shlex.split(printed)
    assert words[:4] == ["VLLM_CPU_KVCACHE_SPACE=1", "python3", "-m", "vllm.entrypoints.openai.api_server"]
    flags = " ".join(words[4:])
    assert "--enable-prompt-embeds" in flags and "--dtype float32" in flags
    assert "--lora-target-modules o_proj qkv_proj" in flags and "--max-lora-rank 32" in flags
    assert f"--lora-modules {ADAPTER}={demo_bundle.resolve() / 'lora'}" in flags
    served = {m["id"] for m in httpx.get(f"{engine.url}/v1/models").json()["data"]}
    assert served == {demo_bundle.name, ADAPTER}


def test_a_conversation_through_the_remote_engine_equals_hf_peft(api: RunningServer, demo_bundle: Path) -> None:
    media = [("image", valid("image", 3)), ("audio", valid("audio", 4))]
    questions = ["What is in this?", "What colour is the box?", "Where is it? Answer in one word."]
    assert_served_chat_equals(api.url, Oracle(demo_bundle), questions, media)


async def test_concurrent_staggered_lora_requests_all_finish(engine: Server, demo_bundle: Path) -> None:
    """vLLM bug #51122 through the server: without `--lora-target-modules o_proj qkv_proj` this kills
    the engine core (measured: einsum size mismatch, /health 503); with it, every request finishes."""
    remote = await RemoteVLLMEngine.connect(RemoteEngineConfig(engine.url, ADAPTER))

    async def one(i: int, prompt: torch.Tensor) -> str | None:
        await asyncio.sleep(0.05 * i)
        deltas = remote.generate(f"lora-{i}", prompt, Sampling(16, 0.0, 1.0, -1, None, ()))
        return [d.finish_reason async for d in deltas][-1]

    try:
        reasons = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts(demo_bundle, 16))))
    finally:
        await remote.close()
    assert set(reasons) <= {"length", "stop"} and len(reasons) == 16  # every one ran to its end
    assert httpx.get(f"{engine.url}/health").status_code == 200


async def test_closing_the_stream_aborts_the_servers_request(engine: Server, demo_bundle: Path) -> None:
    """Greedy on this prompt the demo bundle runs all 1,000 tokens (measured): a request that stopped
    short of them was aborted. The tiny model makes them in about a second, so the server can finish
    before it notices the closed connection: up to three tries, one abort is the proof."""
    remote = await RemoteVLLMEngine.connect(RemoteEngineConfig(engine.url, ADAPTER))
    counts = []
    try:
        for attempt in range(3):
            generated = metric(engine, "vllm:generation_tokens_total")
            deltas = remote.generate(
                f"long-{attempt}", described_picture(demo_bundle), Sampling(1000, 0.0, 1.0, -1, None, ())
            )
            received = 0
            async for delta in deltas:
                received += len(delta.token_ids)
                if received > 20:
                    break
            await deltas.aclose()
            assert await eventually(lambda: metric(engine, "vllm:num_requests_running") == 0)
            counts.append(metric(engine, "vllm:generation_tokens_total") - generated)
            if counts[-1] < 1000:
                break
    finally:
        await remote.close()
    assert counts[-1] < 1000, counts


def described_picture(demo_bundle: Path) -> torch.Tensor:
    bundle = load_bundle(demo_bundle)
    table = PromptAssembler.load(bundle.llm_dir)
    slot = torch.linspace(-0.05, 0.05, table.hidden_size)[None]
    return table.assemble(load_family(bundle).prompt([], "Describe the picture.", [Medium("image", slot)]))


async def eventually(condition: Callable[[], bool], timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return condition()


def metric(engine: Server, name: str, label: str = "") -> float:
    """The sum of a metric's samples on the engine's /metrics (those with `label`, when given)."""
    lines = httpx.get(f"{engine.url}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name) and label in line)


def test_a_dead_engine_is_503_and_the_api_recovers_when_it_is_back(
    api: RunningServer, engine: Server, demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Last in the module: it kills the module's engine."""
    with engine_killed(api, engine, demo_bundle, tmp_path_factory.mktemp("engine-again")):
        pass  # engine_killed asserts the 503, /readyz, and the recovery
