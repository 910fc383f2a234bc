"""The scaled topology as separate processes on loopback: a stock vLLM server behind vllm-router
(consistent hashing on the session), the encoder service, Redis, and two stateless API replicas
that load neither vLLM nor ImageBind. Any replica serves any turn: a conversation alternating
replicas turn by turn gives exactly HF + PEFT's replies through the router, `/embeddings` through
a replica equals the embedded ones, the router passes megabyte prompts and streams replies as
they come, a replica killed mid-stream loses only that turn (the session
keeps its committed turns; once the dead replica's lease on it runs out, the other replica carries
the conversation on), and the engine killed behind the router
is 503 naming the engine and /readyz false, until it is back, without restarting the API."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from benchmarks.server import Router, Server, stock_engine, vllm_router, wait_ready
from service.bundle import load_bundle
from service.core.prompt import PromptAssembler
from service.engines.base import Sampling
from service.engines.vllm_remote import RemoteEngineConfig, RemoteVLLMEngine
from service.engines.vllm_settings import ADAPTER
from tests.conftest import AUTH, REPO, RunningServer, engine_killed, running_encoders, running_server
from tests.media import valid
from tests.oracle import Oracle, assert_served_chat_equals

pytestmark = pytest.mark.e2e
LOCK_TTL_S = 3  # a dead replica's lease on its session runs out this quickly


@dataclass
class Topology:
    engine: Server
    router: Router
    replicas: list[RunningServer]


@pytest.fixture(scope="module")
def topology(demo_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    logs = tmp_path_factory.mktemp("topology")
    with ExitStack() as stack:
        engine = stack.enter_context(stock_engine(demo_bundle, logs))
        router = stack.enter_context(vllm_router([engine.url], logs))
        encoders = stack.enter_context(running_encoders(demo_bundle, redis_url, logs))
        env = {"PANDASERVE_ENGINE_URL": router.url, "PANDASERVE_ENCODER_URL": encoders.url}
        env["PANDASERVE_SESSION_LOCK_TTL_S"] = str(LOCK_TTL_S)
        replicas = [
            stack.enter_context(running_server(demo_bundle, redis_url, tmp_path_factory.mktemp(name), env))
            for name in ("replica-a", "replica-b")
        ]
        yield Topology(engine, router, replicas)


def routed(router: Router) -> float:
    """Requests the router has placed by consistent hashing so far (its own Prometheus counter)."""
    lines = httpx.get(f"{router.metrics_url}/metrics").text.splitlines()
    wanted = 'vllm_router_policy_decisions_total{policy="consistent_hash"'
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(wanted))


def test_a_conversation_alternating_replicas_through_the_router_equals_hf_peft(
    topology: Topology, demo_bundle: Path
) -> None:
    media = [("image", valid("image", 61)), ("audio", valid("audio", 62))]
    questions = ["What is in this?", "What colour is the box?", "Where is it? Answer in one word."]
    before = routed(topology.router)
    assert_served_chat_equals([r.url for r in topology.replicas], Oracle(demo_bundle), questions, media)
    assert routed(topology.router) - before == len(questions)  # every turn went through the router


def test_embeddings_through_a_replica_equal_the_embedded_ones(
    topology: Topology, demo_bundle: Path, tmp_path: Path
) -> None:
    """The replica's /embeddings come from the encoder service; `pandaserve embed` computes the same
    file's embedding in its own process, as the embedded default does."""
    files = {m: valid(m, 64) for m in ("image", "audio")}
    upload = [(m, (m, d)) for m, d in files.items()]
    r = httpx.post(f"{topology.replicas[1].url}/embeddings", files=upload, headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    for served, (modality, data) in zip(r.json()["data"], files.items(), strict=True):
        path = tmp_path / modality
        path.write_bytes(data)
        command = ["embed", "--bundle", str(demo_bundle), "--modality", modality, str(path)]
        local = subprocess.run(
            [sys.executable, "-m", "pandaserve", *command],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        (expected,) = json.loads(local.stdout)["data"]
        assert (served["modality"], served["sha256"]) == (expected["modality"], expected["sha256"])
        torch.testing.assert_close(
            torch.tensor(served["embedding"]), torch.tensor(expected["embedding"]), rtol=0, atol=1e-5
        )


async def test_the_router_takes_megabyte_prompts_and_streams_tokens_as_they_come(
    topology: Topology, demo_bundle: Path
) -> None:
    """A prompt of 1,000 positions (1.3 MB of JSON) goes through the router, and its reply streams
    through it as the engine makes it: the first chunk long before the last (measured: 28 ms vs
    2.9 s for 200 tokens), not all at the end."""
    hidden = PromptAssembler.load(load_bundle(demo_bundle).llm_dir).hidden_size
    prompt = torch.linspace(-0.05, 0.05, 1000 * hidden).reshape(1000, hidden)
    remote = await RemoteVLLMEngine.connect(RemoteEngineConfig(topology.router.url, ADAPTER))
    arrivals: list[tuple[float, int]] = []
    started = time.perf_counter()
    try:
        async for delta in remote.generate("big", prompt, Sampling(100, 0.0, 1.0, -1, None, ()), "sess_big"):
            arrivals.append((time.perf_counter() - started, len(delta.token_ids)))
    finally:
        await remote.close()
    assert sum(n for _, n in arrivals) >= 20 and len(arrivals) >= 10, arrivals
    assert arrivals[0][0] < arrivals[-1][0] / 2, arrivals


def test_a_replica_killed_mid_stream_loses_only_that_turn(topology: Topology) -> None:
    """It kills replica a; the tests after it use replica b."""
    a, b = topology.replicas
    image = [("image", ("i", valid("image", 63)))]
    with httpx.Client(headers=AUTH, timeout=120) as client:
        first = client.post(f"{a.url}/chat", data={"message": "Hi", "max_tokens": "4"}, files=image)
        assert first.status_code == 200, first.text
        sid = first.json()["session_id"]
        form = {"message": "Tell me everything.", "max_tokens": "400", "stream": "true", "session_id": sid}
        with pytest.raises(httpx.HTTPError), client.stream("POST", f"{a.url}/chat", data=form) as stream:
            for line in stream.iter_lines():
                if line.startswith("event: delta"):
                    a.proc.kill()  # mid-stream: the client's turn fails
        turns = client.get(f"{b.url}/sessions/{sid}").json()["turns"]
        assert [t["message"] for t in turns] == ["Hi"]  # exactly its committed turns
        # The dead replica's lease on the session runs out within its TTL: until then the session is
        # busy, never corrupt; then replica b carries the conversation on.
        busy = client.post(f"{b.url}/chat", data={"message": "Still there?", "session_id": sid})
        assert busy.status_code == 409 and busy.json()["error"]["type"] == "conflict_error"
        time.sleep(LOCK_TTL_S + 0.5)
        again = client.post(f"{b.url}/chat", data={"message": "Still there?", "max_tokens": "4", "session_id": sid})
        assert again.status_code == 200, again.text
        turns = client.get(f"{b.url}/sessions/{sid}").json()["turns"]
        assert [t["message"] for t in turns] == ["Hi", "Still there?"]


def test_the_engine_killed_behind_the_router_is_503_and_the_api_recovers(
    topology: Topology, demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Last in the module: it kills the engine. The router answers 500 while its only engine refuses
    connections, then 503 once its health check marks it down; the API turns either into 503
    `engine_error` and /readyz false, and serves again once the router sees the engine back."""
    b, router = topology.replicas[1], topology.router

    def router_reports_it_down(client: httpx.Client) -> None:
        # Past the API's breaker cool-down the router itself reports the engine down (its /health 503).
        wait_ready(router.url, router.proc, router.log, timeout_s=60, path="/health", status=503)
        assert client.get("/readyz").status_code == 503

    with engine_killed(
        b, topology.engine, demo_bundle, tmp_path_factory.mktemp("engine-again"), router_reports_it_down
    ):
        pass  # engine_killed asserts the 503, /readyz, and the recovery through the router
