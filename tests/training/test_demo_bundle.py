"""The demo bundle: LLaMA-like tokenizer, loadable LLM + LoRA, projector, ImageBind, manifest."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file
from sentencepiece import sentencepiece_model_pb2 as sp_pb

from encoders.imagebind import PRESETS, ImageBindConfig, ImageBindModel
from service.bundle import load_bundle
from training.demo_bundle import HIDDEN_SIZE, build_demo_bundle

pytestmark = pytest.mark.integration

TEXTS = [
    "Hello world",
    "### Human: <Img></Img> What colour is the square?\n### Assistant: The square is red.\n###",
    "\n###",
    "line one\nline two\n\n\nline five",
    "There are 12345 cats and 7 dogs; 3.14159 != 2.71828",
    "Punctuation: !?.,;:'\"()[]{}<>@#$%^&*-_=+|\\/~`",
    "héllo 世界 🙂",
    "multiple   spaces    here  and a trailing space ",
    "tabs\tand\ttabs",
    "ÆØÅ ñ ç ß — “quotes” … € 👍🏽",
    "UPPER lower MiXeD",
    "a",
]


@pytest.fixture(scope="module")
def bundle_dir(demo_bundle: Path) -> Path:
    return demo_bundle  # seed 0, built once per session (tests/conftest.py)


@pytest.fixture(scope="module")
def sp(bundle_dir: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(bundle_dir / "llm" / "tokenizer.model"))


@pytest.fixture(scope="module")
def hf_tokenizer(bundle_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(bundle_dir / "llm"))


def _byte_piece_ids(sp: spm.SentencePieceProcessor) -> set[int]:
    return {i for i in range(sp.get_piece_size()) if sp.is_byte(i)}


def _special_ids(sp: spm.SentencePieceProcessor) -> set[int]:
    return {i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)}


# --- tokenizer ---------------------------------------------------------------------


def test_layout(bundle_dir: Path) -> None:
    for rel in (
        "manifest.json",
        "llm/config.json",
        "llm/generation_config.json",
        "llm/model.safetensors",
        "llm/tokenizer.model",
        "llm/tokenizer.json",
        "llm/tokenizer_config.json",
        "lora/adapter_config.json",
        "lora/adapter_model.safetensors",
        "projector.safetensors",
        "imagebind.pth",
    ):
        assert (bundle_dir / rel).is_file(), rel
    # No temp dirs left next to the bundle.
    assert [p.name for p in bundle_dir.parent.iterdir()] == ["demo"]
    size = sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file())
    assert size < 40 * 2**20


def test_tokenizer_is_llama_like(sp: spm.SentencePieceProcessor) -> None:
    model = sp_pb.ModelProto.FromString(sp.serialized_model_proto())  # type: ignore[attr-defined]
    trainer, normalizer = model.trainer_spec, model.normalizer_spec
    assert trainer.model_type == sp_pb.TrainerSpec.BPE  # type: ignore[attr-defined]
    assert trainer.vocab_size == sp.get_piece_size() == 2000
    assert trainer.byte_fallback and trainer.split_digits
    assert normalizer.add_dummy_prefix and not normalizer.remove_extra_whitespaces
    assert normalizer.name == "identity"
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert len(_byte_piece_ids(sp)) == 256
    assert sp.piece_to_id("<0x0A>") == 13  # as in LLaMA: bytes follow the 3 specials


def test_newline_hashes_split_like_llama(sp: spm.SentencePieceProcessor) -> None:
    # LLaMA: "\n###" -> [13, 2277, 29937] = <0x0A> ## # (after the dummy-prefix "▁").
    assert sp.encode("\n###", out_type=str) == ["▁", "<0x0A>", "##", "#"]
    pieces = sp.encode("The square is red.\n###", out_type=str)
    assert pieces[-3:] == ["<0x0A>", "##", "#"]
    assert sp.piece_to_id("###") == sp.unk_id()  # no "###" piece, or "##" would never appear
    assert sp.piece_to_id("\n") == sp.unk_id()  # newline only via byte fallback


def test_human_turn_tokenizes_sensibly(sp: spm.SentencePieceProcessor) -> None:
    pieces = sp.encode("### Human: <Img></Img> Describe this image.", out_type=str)
    assert pieces[:2] == ["▁###", "▁Human"]
    assert "".join(pieces).replace("▁", " ") == " ### Human: <Img></Img> Describe this image."
    assert not any(sp.is_byte(sp.piece_to_id(p)) for p in pieces)


@pytest.mark.parametrize("text", TEXTS)
def test_hf_encode_matches_sentencepiece(sp, hf_tokenizer, text: str) -> None:
    ids = sp.encode(text)
    assert hf_tokenizer.encode(text, add_special_tokens=False) == ids
    assert hf_tokenizer(text).input_ids == [sp.bos_id(), *ids]  # bos added, no eos
    assert hf_tokenizer.decode(ids) == sp.decode(ids) == text


def test_hf_decode_matches_sentencepiece_on_random_ids(sp, hf_tokenizer) -> None:
    rng = random.Random(0)
    # Byte pieces are drawn only as whole UTF-8 characters below: for a byte run that
    # is not valid UTF-8, sentencepiece keeps its valid single bytes ("A\ufffd") while
    # HF's ByteFallback replaces every byte of the run ("\ufffd\ufffd").
    plain = sorted(set(range(sp.get_piece_size())) - _special_ids(sp) - _byte_piece_ids(sp))
    chars = [sp.encode(c)[-len(c.encode()) :] for c in "é世界🙂€ß\n\t"]
    for _ in range(300):
        ids: list[int] = []
        for _ in range(rng.randint(1, 40)):
            ids += rng.choice(chars) if rng.random() < 0.15 else [rng.choice(plain)]
        assert hf_tokenizer.decode(ids) == sp.decode(ids), ids


def test_special_ids_and_vocab_size(bundle_dir: Path, sp, hf_tokenizer) -> None:
    assert (hf_tokenizer.bos_token_id, hf_tokenizer.eos_token_id) == (1, 2)
    assert hf_tokenizer.unk_token_id == 0
    assert len(hf_tokenizer) == sp.get_piece_size()
    config = json.loads((bundle_dir / "llm" / "config.json").read_text())
    assert config["vocab_size"] == sp.get_piece_size()
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    generation = json.loads((bundle_dir / "llm" / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)
    assert generation["pad_token_id"] == 2


# --- manifest, weights -------------------------------------------------------------


def test_manifest(bundle_dir: Path, sp) -> None:
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    assert manifest.stop_token_ids == [sp.piece_to_id("##")]
    assert sp.id_to_piece(manifest.stop_token_ids[0]) == "##"
    assert bundle.llm_dir == bundle_dir.resolve() / "llm"
    assert bundle.lora_dir is not None and bundle.lora_dir.is_dir()
    assert bundle.projector_path.is_file() and bundle.imagebind_path.is_file()
    assert bundle.tokenizer_path.is_file()
    assert ImageBindConfig(**manifest.imagebind.config) == PRESETS["tiny"]
    assert manifest.imagebind.config == json.loads(json.dumps(asdict(PRESETS["tiny"])))


def test_projector(bundle_dir: Path) -> None:
    tensors = load_file(str(bundle_dir / "projector.safetensors"))
    assert set(tensors) == {"llama_proj.weight", "llama_proj.bias"}
    assert tensors["llama_proj.weight"].shape == (HIDDEN_SIZE, 1024)
    assert tensors["llama_proj.bias"].shape == (HIDDEN_SIZE,)
    assert all(t.dtype == torch.float32 for t in tensors.values())


def test_imagebind_loads_strictly(bundle_dir: Path) -> None:
    state = torch.load(bundle_dir / "imagebind.pth", map_location="cpu", weights_only=True)
    model = ImageBindModel(PRESETS["tiny"])
    model.load_state_dict(state, strict=True)
    assert set(state) == set(model.state_dict())


def test_llm_and_lora_load_and_lora_changes_logits(bundle_dir: Path, sp) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(bundle_dir / "llm")).eval()
    assert base.config.hidden_size == HIDDEN_SIZE
    assert base.config.hidden_size // base.config.num_attention_heads == 64
    assert next(base.parameters()).dtype == torch.float32
    prompt = "### Human: <Img></Img> What colour is the square?\n### Assistant:"
    ids = torch.tensor([[sp.bos_id(), *sp.encode(prompt)]])
    with torch.no_grad():
        base_logits = base(ids).logits
        model = PeftModel.from_pretrained(base, str(bundle_dir / "lora")).eval()
        lora_logits = model(ids).logits
        with model.disable_adapter():
            disabled_logits = model(ids).logits
    assert base_logits.shape == (1, ids.shape[1], sp.get_piece_size())
    torch.testing.assert_close(disabled_logits, base_logits)
    assert (lora_logits - base_logits).abs().max() > 1.0
    assert not torch.equal(lora_logits.argmax(-1), base_logits.argmax(-1))
    # Peaked next-token distribution: PandaGPT's top_p=0.01 sampling is effectively greedy.
    assert lora_logits[0, -1].softmax(-1).max() > 0.05

    config = json.loads((bundle_dir / "lora" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (32, 32, "LORA")
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    adapter = load_file(str(bundle_dir / "lora" / "adapter_model.safetensors"))
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert len(lora_b) == 4 * base.config.num_hidden_layers
    assert all(t.abs().sum() > 0 for t in lora_b)


# --- determinism -------------------------------------------------------------------


def _all_tensors(root: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for rel in ("llm/model.safetensors", "lora/adapter_model.safetensors", "projector.safetensors"):
        tensors.update({f"{rel}:{k}": v for k, v in load_file(str(root / rel)).items()})
    state = torch.load(root / "imagebind.pth", map_location="cpu", weights_only=True)
    tensors.update({f"imagebind.pth:{k}": v for k, v in state.items()})
    return tensors


def _is_constant(tensor: torch.Tensor) -> bool:
    return bool((tensor == tensor.flatten()[0]).all()) if tensor.numel() else True


def test_determinism(bundle_dir: Path, tmp_path: Path) -> None:
    build_demo_bundle(tmp_path / "same", seed=0)
    build_demo_bundle(tmp_path / "other", seed=1)
    reference = _all_tensors(bundle_dir)
    same, other = _all_tensors(tmp_path / "same"), _all_tensors(tmp_path / "other")
    assert same.keys() == reference.keys() == other.keys()
    for key, tensor in reference.items():
        assert torch.equal(same[key], tensor), key
    # Every randomly initialised tensor changes with the seed; constants (norm weights
    # of 1, zero biases) and ImageBind's computed buffers (the text causal mask) do not.
    buffers = {f"imagebind.pth:{k}" for k, _ in ImageBindModel(PRESETS["tiny"]).named_buffers()}
    for prefix in ("llm/", "lora/", "projector", "imagebind"):
        keys = [k for k in reference if k.startswith(prefix) and k not in buffers and not _is_constant(reference[k])]
        assert keys and all(not torch.equal(other[k], reference[k]) for k in keys), prefix
    # The tokenizer is seed-independent: one vocabulary for every demo bundle.
    tokenizer = (bundle_dir / "llm" / "tokenizer.model").read_bytes()
    assert (tmp_path / "same" / "llm" / "tokenizer.model").read_bytes() == tokenizer
    assert (tmp_path / "other" / "llm" / "tokenizer.model").read_bytes() == tokenizer
    for name in ("manifest.json", "llm/config.json", "llm/tokenizer.json"):
        assert (tmp_path / "same" / name).read_text() == (bundle_dir / name).read_text()


def test_rebuild_replaces_existing_bundle(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    build_demo_bundle(out, seed=2)
    assert not (out / "stale.txt").exists()
    assert load_bundle(out).manifest.llm == "llm"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
