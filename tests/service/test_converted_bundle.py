"""A bundle converted from a PandaGPT delta (real key names, tiny shapes, fp16) is served exactly:
greedy reply ids equal HF + PEFT with the delta loaded the original way (get_peft_model + its keys)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import running_server
from tests.media import valid
from tests.oracle import Oracle, assert_served_chat_equals
from tests.training.test_convert import make_delta, original_peft_model, save_delta
from training.convert import convert_pandagpt

pytestmark = pytest.mark.e2e


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
    assert_served_chat_equals(converted_server, oracle, ["What is this?", "Tell me more."], media)
