"""`convert_pandagpt`: released PandaGPT checkpoints (real key names, tiny shapes) -> a bundle."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file

from encoders.imagebind import PRESETS
from service.bundle import load_bundle
from service.families import generation_defaults, load_family
from tests.conftest import REPO
from training.convert import (
    DeltaLayout,
    check_tokenizer_bos,
    convert_pandagpt,
    inspect_delta,
    resolve_imagebind_preset,
)
from training.demo_bundle import HIDDEN_SIZE, NUM_LAYERS
from training.tokenizer import stop_token_id

pytestmark = pytest.mark.integration

RANK = 32
PROJECTIONS = ("q", "k", "v", "o")
LORA_KEY = "llama_model.base_model.model.model.layers.{i}.self_attn.{p}_proj.lora_{ab}.default.weight"


def delta_shapes(hidden: int, layers: int, rank: int = RANK, projector_in: int = 1024) -> dict[str, tuple[int, ...]]:
    """The released delta's key -> shape map (PandaGPT saves its trainable parameters only)."""
    shapes: dict[str, tuple[int, ...]] = {"llama_proj.weight": (hidden, projector_in), "llama_proj.bias": (hidden,)}
    for i in range(layers):
        for p in PROJECTIONS:
            shapes[LORA_KEY.format(i=i, p=p, ab="A")] = (rank, hidden)
            shapes[LORA_KEY.format(i=i, p=p, ab="B")] = (hidden, rank)
    return shapes


def make_delta(hidden: int = HIDDEN_SIZE, layers: int = NUM_LAYERS, seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded non-zero fp16 tensors with the real names (B non-zero, so the LoRA matters)."""
    gen = torch.Generator().manual_seed(seed)
    return {
        key: (torch.randn(shape, generator=gen) * (0.3 if key.startswith("llama_proj.weight") else 0.1)).half()
        for key, shape in delta_shapes(hidden, layers).items()
    }


def save_delta(directory: Path, state: dict[str, torch.Tensor], zipfile: bool = True) -> Path:
    """torch.save like PandaGPT: a dict of (requires_grad) Parameters in pytorch_model.pt."""
    directory.mkdir(parents=True, exist_ok=True)
    params = {k: torch.nn.Parameter(v) for k, v in state.items()}
    torch.save(params, directory / "pytorch_model.pt", _use_new_zipfile_serialization=zipfile)
    return directory


@pytest.fixture(scope="module")
def delta() -> dict[str, torch.Tensor]:
    return make_delta()


@pytest.fixture(scope="module")
def converted(demo_bundle: Path, delta: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("convert")
    out = root / "bundle"
    convert_pandagpt(demo_bundle / "llm", save_delta(root / "delta", delta), demo_bundle / "imagebind.pth", out)
    return out


def convert_error(tmp_path: Path, demo_bundle: Path, state: dict[str, torch.Tensor], llm: Path | None = None) -> str:
    out = tmp_path / "out"
    with pytest.raises(ValueError) as info:
        llm = llm or demo_bundle / "llm"
        convert_pandagpt(llm, save_delta(tmp_path / "delta", state), demo_bundle / "imagebind.pth", out)
    assert {p.name for p in tmp_path.iterdir()} <= {"delta", "llm"}  # nothing written, no temp dir left
    return str(info.value)


# --- round trip --------------------------------------------------------------------


def test_layout(converted: Path) -> None:
    for rel in ("manifest.json", "lora/adapter_config.json", "lora/adapter_model.safetensors", "projector.safetensors"):
        assert (converted / rel).is_file(), rel
    assert not (converted / "llm").exists() and not (converted / "imagebind.pth").exists()  # referenced, not copied
    assert {p.name for p in converted.parent.iterdir()} == {"bundle", "delta"}  # no temp dirs left behind


def test_manifest(converted: Path, demo_bundle: Path) -> None:
    bundle = load_bundle(converted)
    manifest = bundle.manifest
    assert Path(manifest.imagebind.checkpoint).is_absolute()
    assert bundle.imagebind_path == (demo_bundle / "imagebind.pth").resolve()
    assert manifest.imagebind.config == json.loads(json.dumps(asdict(PRESETS["tiny"])))
    assert Path(manifest.llm).is_absolute() and bundle.llm_dir == (demo_bundle / "llm").resolve()
    assert bundle.lora_dir == converted / "lora"
    assert bundle.projector_path == converted / "projector.safetensors"
    sp = spm.SentencePieceProcessor(model_file=str(bundle.tokenizer_path))
    assert manifest.stop_token_ids == [sp.piece_to_id("##")] == [stop_token_id(sp)]
    assert manifest.family == "pandagpt"
    generation = generation_defaults(load_family(bundle), bundle)  # the family's: the bundle sets none
    assert (generation.max_tokens, generation.top_p) == (256, 0.01)
    assert (generation.temperature, generation.top_k) == (1.0, 50)


def test_projector_and_adapter_tensors(converted: Path, delta: dict[str, torch.Tensor]) -> None:
    projector = load_file(str(converted / "projector.safetensors"))
    assert projector.keys() == {"llama_proj.weight", "llama_proj.bias"}
    for key, tensor in projector.items():
        assert tensor.dtype == torch.float16
        assert torch.equal(tensor, delta[key])
    adapter = load_file(str(converted / "lora" / "adapter_model.safetensors"))
    assert len(adapter) == NUM_LAYERS * 8
    for key, tensor in adapter.items():
        assert key.startswith("base_model.model.model.layers.") and ".default." not in key
        original = "llama_model." + key.replace(".weight", ".default.weight")
        assert tensor.dtype == torch.float16 and torch.equal(tensor, delta[original])


def test_adapter_config(converted: Path, demo_bundle: Path) -> None:
    config = json.loads((converted / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"], config["bias"]) == (RANK, 32, 0.1, "none")
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == str((demo_bundle / "llm").resolve())
    assert not config["use_rslora"] and not config["use_dora"]


def test_reconvert_replaces_bundle(demo_bundle: Path, delta: dict[str, torch.Tensor], tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    source = save_delta(tmp_path / "delta", delta)
    convert_pandagpt(demo_bundle / "llm", source, demo_bundle / "imagebind.pth", out)
    convert_pandagpt(demo_bundle / "llm", source / "pytorch_model.pt", demo_bundle / "imagebind.pth", out)
    assert load_bundle(out).manifest.stop_token_ids
    assert {p.name for p in tmp_path.iterdir()} == {"bundle", "delta"}


def test_legacy_torch_save_format(demo_bundle: Path, delta: dict[str, torch.Tensor], tmp_path: Path) -> None:
    source = save_delta(tmp_path / "delta", delta, zipfile=False)  # not memory-mappable
    convert_pandagpt(demo_bundle / "llm", source, demo_bundle / "imagebind.pth", tmp_path / "bundle")
    projector = load_file(str(tmp_path / "bundle" / "projector.safetensors"))
    assert torch.equal(projector["llama_proj.bias"], delta["llama_proj.bias"])


def test_refuses_to_replace_a_non_bundle_or_its_inputs(demo_bundle: Path, tmp_path: Path) -> None:
    source = save_delta(tmp_path / "delta", make_delta())
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a bundle"):
        convert_pandagpt(demo_bundle / "llm", source, demo_bundle / "imagebind.pth", tmp_path / "notes")
    with pytest.raises(ValueError, match="would contain the input"):
        convert_pandagpt(demo_bundle / "llm", source, demo_bundle / "imagebind.pth", tmp_path)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


# --- same model as the original PandaGPT loading -------------------------------------


def original_peft_model(llm: Path, delta: dict[str, torch.Tensor]) -> torch.nn.Module:
    """PandaGPT's way: get_peft_model with its LoraConfig, then its saved LoRA tensors by name."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = LoraConfig(
        r=32,
        lora_alpha=32,
        lora_dropout=0.1,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(llm)), config)
    lora = {k.removeprefix("llama_model."): v for k, v in delta.items() if k.startswith("llama_model.")}
    result = model.load_state_dict(lora, strict=False)
    assert result.unexpected_keys == []
    lora_params = {name for name, _ in model.named_parameters() if "lora_" in name}
    assert lora_params == set(lora) and not lora_params & set(result.missing_keys)
    return model.eval()


def _converted_peft_model(llm: Path, bundle: Path) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(llm)), str(bundle / "lora")).eval()


def test_same_greedy_reply_as_original_loading(
    converted: Path, demo_bundle: Path, delta: dict[str, torch.Tensor]
) -> None:
    llm = demo_bundle / "llm"
    original = original_peft_model(llm, delta)
    ours = _converted_peft_model(llm, converted)
    embeds = torch.randn(1, 12, HIDDEN_SIZE, generator=torch.Generator().manual_seed(7)) * 0.3
    mask = torch.ones(1, 12, dtype=torch.long)
    with torch.no_grad():
        logits = original(inputs_embeds=embeds, attention_mask=mask).logits
        assert torch.allclose(logits, ours(inputs_embeds=embeds, attention_mask=mask).logits, atol=1e-5, rtol=0)
        with ours.disable_adapter():  # the LoRA really is in play
            assert not torch.allclose(logits, ours(inputs_embeds=embeds, attention_mask=mask).logits, atol=1e-2)
        kwargs = {"inputs_embeds": embeds, "attention_mask": mask, "max_new_tokens": 16, "do_sample": False}
        expected = original.generate(**kwargs)
        got = ours.generate(**kwargs)
        with ours.disable_adapter():
            base = ours.generate(**kwargs)
    assert expected.shape == (1, 16)  # no early EOS: the whole reply is compared
    assert got.tolist() == expected.tolist()
    assert base.tolist() != expected.tolist()


# --- errors ------------------------------------------------------------------------


def test_missing_key(tmp_path: Path, demo_bundle: Path) -> None:
    state = make_delta()
    key = LORA_KEY.format(i=1, p="v", ab="B")
    del state[key]
    message = convert_error(tmp_path, demo_bundle, state)
    assert "1 missing keys" in message and key in message


def test_missing_projector(tmp_path: Path, demo_bundle: Path) -> None:
    state = make_delta()
    del state["llama_proj.weight"]
    assert "missing keys: llama_proj.weight" in convert_error(tmp_path, demo_bundle, state)


def test_unexpected_key(tmp_path: Path, demo_bundle: Path) -> None:
    state = make_delta()
    extra = "llama_model.base_model.model.model.layers.0.mlp.gate_proj.lora_A.default.weight"
    state[extra] = torch.zeros(RANK, HIDDEN_SIZE, dtype=torch.float16)
    message = convert_error(tmp_path, demo_bundle, state)
    assert "1 unexpected keys" in message and extra in message


def test_wrong_shape(tmp_path: Path, demo_bundle: Path) -> None:
    state = make_delta()
    key = LORA_KEY.format(i=0, p="o", ab="A")
    state[key] = torch.zeros(16, HIDDEN_SIZE, dtype=torch.float16)
    message = convert_error(tmp_path, demo_bundle, state)
    assert "1 shape mismatches" in message
    assert f"{key}: [16, {HIDDEN_SIZE}] (expected [{RANK}, {HIDDEN_SIZE}])" in message


def test_hidden_size_mismatch(tmp_path: Path, demo_bundle: Path) -> None:
    message = convert_error(tmp_path, demo_bundle, make_delta(hidden=128))
    assert "hidden size mismatch" in message and "128" in message and str(HIDDEN_SIZE) in message


def test_layer_count_mismatch(tmp_path: Path, demo_bundle: Path) -> None:
    message = convert_error(tmp_path, demo_bundle, make_delta(layers=NUM_LAYERS + 1))
    assert "layer count mismatch" in message and f"num_hidden_layers {NUM_LAYERS}" in message


def _train_sp(bos_id: int) -> spm.SentencePieceProcessor:
    model = io.BytesIO()
    words = ["red", "green", "blue", "panda", "square", "circle", "image", "audio", "video", "the", "is", "in"]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(" ".join(words[i:] + words[:i]) for i in range(len(words))),
        model_writer=model,
        model_type="char",
        vocab_size=30,
        unk_id=0,
        bos_id=bos_id,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def test_bos_check() -> None:
    check_tokenizer_bos(_train_sp(bos_id=1))
    with pytest.raises(ValueError, match="BOS id is 3.*expected 1"):
        check_tokenizer_bos(_train_sp(bos_id=3))


def test_convert_rejects_tokenizer_with_other_bos(tmp_path: Path, demo_bundle: Path) -> None:
    llm = tmp_path / "llm"
    shutil.copytree(demo_bundle / "llm", llm)
    (llm / "tokenizer.model").write_bytes(_train_sp(bos_id=3).serialized_model_proto())
    message = convert_error(tmp_path, demo_bundle, make_delta(), llm=llm)
    assert "tokenizer.model: BOS id is 3" in message


def test_imagebind_no_matching_preset(tmp_path: Path, demo_bundle: Path) -> None:
    state = torch.load(demo_bundle / "imagebind.pth", map_location="cpu", weights_only=True)
    key = next(k for k in state if k.startswith("modality_heads.vision"))
    state[key] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    assert resolve_imagebind_preset(demo_bundle / "imagebind.pth") == ("tiny", PRESETS["tiny"])
    with pytest.raises(ValueError, match=f"matches no ImageBind preset.*{key}"):
        resolve_imagebind_preset(tmp_path / "bad.pth")


# --- the released 7B / 13B layouts (names and shapes only) ---------------------------


@pytest.mark.parametrize(("layers", "hidden", "count"), [(32, 4096, 258), (40, 5120, 322)])
def test_released_layouts(layers: int, hidden: int, count: int) -> None:
    shapes = delta_shapes(hidden, layers)
    assert len(shapes) == count
    assert inspect_delta(shapes) == DeltaLayout(num_layers=layers, hidden_size=hidden, rank=RANK, projector_in=1024)
    meta = {k: torch.empty(v, dtype=torch.float16, device="meta").shape for k, v in shapes.items()}
    assert inspect_delta(meta).num_layers == layers


def test_released_layout_with_a_layer_gap() -> None:
    shapes = delta_shapes(5120, 40)
    gone = [k for k in shapes if ".layers.17." in k]
    for key in gone:
        del shapes[key]
    with pytest.raises(ValueError, match=r"40 layers, hidden 5120, LoRA rank 32.*8 missing keys: .*layers\.17\."):
        inspect_delta(shapes)


def test_many_problems_are_summarised() -> None:
    shapes = {k: v for k, v in delta_shapes(4096, 32).items() if ".layers.3." not in k and ".layers.4." not in k}
    with pytest.raises(ValueError, match=r"16 missing keys: .*\.\.\. \(11 more\)") as info:
        inspect_delta({**shapes, "llama_model.base_model.model.model.layers.3.self_attn.q_proj.lora_B.x": (1,)})
    assert "1 unexpected keys" in str(info.value)


def test_no_lora_keys() -> None:
    with pytest.raises(ValueError, match="no LoRA tensors"):
        inspect_delta({"llama_proj.weight": (4096, 1024), "llama_proj.bias": (4096,)})


def test_cli_converts_and_reports_errors(demo_bundle: Path, tmp_path: Path) -> None:
    source = save_delta(tmp_path / "delta", make_delta())
    args = [
        "--vicuna",
        str(demo_bundle / "llm"),
        "--delta",
        str(source),
        "--imagebind",
        str(demo_bundle / "imagebind.pth"),
    ]
    cmd = [sys.executable, "-m", "pandaserve", "bundle", "convert-pandagpt", *args]
    ok = subprocess.run([*cmd, str(tmp_path / "bundle")], cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert load_bundle(tmp_path / "bundle").manifest.lora == "lora"

    broken = make_delta()
    del broken["llama_proj.bias"]
    bad = save_delta(tmp_path / "bad", broken)
    cmd[cmd.index(str(source))] = str(bad)
    failed = subprocess.run([*cmd, str(tmp_path / "other")], cwd=REPO, capture_output=True, text=True)
    assert failed.returncode == 1 and "llama_proj.bias" in failed.stderr
    assert not (tmp_path / "other").exists()
