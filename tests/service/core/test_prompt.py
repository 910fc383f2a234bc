"""The LLM's input embedding table, read alone from every HF checkpoint layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from service.core.prompt import EMBED_KEY, load_token_embeddings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("layout", ["safetensors-sharded", "bin", "bin-sharded"])
def test_token_embeddings_load_from_every_hf_layout(demo_bundle: Path, tmp_path: Path, layout: str) -> None:
    expected = load_token_embeddings(demo_bundle / "llm")
    other = {"lm_head.weight": torch.zeros(3, 2)}
    if layout == "bin":
        torch.save({EMBED_KEY: expected, **other}, tmp_path / "pytorch_model.bin")
    else:
        suffix = "safetensors" if layout.startswith("safetensors") else "bin"
        shards = {EMBED_KEY: f"model-00002-of-00002.{suffix}", "lm_head.weight": f"model-00001-of-00002.{suffix}"}
        for key, name in shards.items():
            tensors = {key: expected if key == EMBED_KEY else other[key]}
            save_file(tensors, str(tmp_path / name)) if suffix == "safetensors" else torch.save(
                tensors, tmp_path / name
            )
        index = "model.safetensors.index.json" if suffix == "safetensors" else "pytorch_model.bin.index.json"
        (tmp_path / index).write_text(json.dumps({"weight_map": shards}))
    assert torch.equal(load_token_embeddings(tmp_path), expected)


def test_missing_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no safetensors or pytorch_model.bin"):
        load_token_embeddings(tmp_path)
