"""The scaled topology as separate processes on loopback: a stock vLLM server, the encoder service,
Redis, and two stateless API replicas that load neither vLLM nor ImageBind. Any replica serves any
turn: a conversation alternating replicas turn by turn gives exactly HF + PEFT's replies, and a
replica killed mid-stream loses only that turn (the session keeps its committed turns; once the dead
replica's lease on the session runs out, the other replica carries the conversation on)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from benchmarks.server import stock_engine
from tests.conftest import AUTH, RunningServer, running_encoders, running_server
from tests.media import valid
from tests.oracle import Oracle, assert_served_chat_equals

pytestmark = pytest.mark.e2e
LOCK_TTL_S = 3  # a dead replica's lease on its session runs out this quickly


@pytest.fixture(scope="module")
def replicas(
    demo_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningServer]]:
    logs = tmp_path_factory.mktemp("topology")
    with ExitStack() as stack:
        engine = stack.enter_context(stock_engine(demo_bundle, logs))
        encoders = stack.enter_context(running_encoders(demo_bundle, redis_url, logs))
        env = {"PANDASERVE_ENGINE_URL": engine.url, "PANDASERVE_ENCODER_URL": encoders.url}
        env["PANDASERVE_SESSION_LOCK_TTL_S"] = str(LOCK_TTL_S)
        yield [
            stack.enter_context(running_server(demo_bundle, redis_url, tmp_path_factory.mktemp(name), env))
            for name in ("replica-a", "replica-b")
        ]


def test_a_conversation_alternating_replicas_equals_hf_peft(replicas: list[RunningServer], demo_bundle: Path) -> None:
    media = [("image", valid("image", 61)), ("audio", valid("audio", 62))]
    questions = ["What is in this?", "What colour is the box?", "Where is it? Answer in one word."]
    assert_served_chat_equals([r.url for r in replicas], Oracle(demo_bundle), questions, media)


def test_a_replica_killed_mid_stream_loses_only_that_turn(replicas: list[RunningServer]) -> None:
    """Last in the module: it kills replica a."""
    a, b = replicas
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
