"""A bundle converted from a PandaGPT delta (real key names, tiny shapes, fp16) is served exactly:
greedy reply ids equal HF + PEFT with the delta loaded the original way (get_peft_model + its keys)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from tests.conftest import AUTH, running_server
from tests.media import valid
from tests.oracle import Oracle
from tests.training.test_convert import make_delta, original_peft_model, save_delta
from training.convert import convert_pandagpt

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def delta() -> dict[str, torch.Tensor]:
    return make_delta(seed=3)


@pytest.fixture(scope="module")
def converted(demo_bundle: Path, delta: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("converted")
    source = save_delta(root / "delta", delta)
    convert_pandagpt(demo_bundle / "llm", source, demo_bundle / "imagebind.pth", root / "bundle")
    return root / "bundle"


@pytest.fixture(scope="module")
def converted_server(converted: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(converted, redis_url, tmp_path_factory.mktemp("converted-server")) as running:
        yield running.url


def test_served_reply_equals_the_original_loading(
    converted_server: str, converted: Path, demo_bundle: Path, delta: dict[str, torch.Tensor]
) -> None:
    oracle = Oracle(converted, llm=original_peft_model(demo_bundle / "llm", delta))
    media = [("image", valid("image", 40)), ("audio", valid("audio", 41))]
    history: list[tuple[str, str]] = []
    session_id = None
    with httpx.Client(base_url=converted_server, timeout=120, headers=AUTH) as client:
        for turn, message in enumerate(["What is this?", "Tell me more."]):
            form = {"message": message, "temperature": "0", "max_tokens": str(MAX_TOKENS), "return_token_ids": "true"}
            form |= {"session_id": session_id} if session_id else {}
            files = [(m, (m, data)) for m, data in media] if turn == 0 else None
            r = client.post("/chat", data=form, files=files)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["token_ids"] == oracle.reply_ids(history, message, media, MAX_TOKENS)
            session_id = body["session_id"]
            history.append((message, body["reply"]))
