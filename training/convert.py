"""Convert the released PandaGPT checkpoints into a model bundle.

Inputs (as released):
    vicuna     HF LLaMA dir of Vicuna v0 (config.json, weights, tokenizer.model)
    delta      PandaGPT's pytorch_model.pt (or its directory): a torch.save'd dict of the
               trainable parameters only, fp16:
                   llama_proj.weight [H, D], llama_proj.bias [H]   (D = ImageBind's 1024)
                   llama_model.base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj
                       .lora_A.default.weight [r, H] and .lora_B.default.weight [H, r]
    imagebind  imagebind_huge.pth

Output (see service.bundle): manifest.json, lora/ (a PEFT adapter dir) and
projector.safetensors. The Vicuna dir and the ImageBind checkpoint are referenced by
absolute path, never copied. Layer count, hidden size and rank come from the delta's
shapes; everything is validated before anything is written, and the bundle is written
atomically (temp dir, then rename).

Usage: pandaserve bundle convert-pandagpt --vicuna DIR --delta FILE --imagebind FILE OUT_DIR
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from encoders.imagebind import PRESETS, ImageBindConfig, ImageBindModel
from service.bundle import ImageBindSpec, Manifest, write_manifest
from service.families.base import LoraSpec
from service.families.pandagpt import LORA
from training.model import peft_config
from training.staging import staged_dir
from training.tokenizer import stop_token_id

DELTA_FILE = "pytorch_model.pt"
PROJ_WEIGHT = "llama_proj.weight"
PROJ_BIAS = "llama_proj.bias"
LLAMA_BOS_ID = 1
# The delta's key (PEFT adapter name "default", wrapped in PandaGPT's `llama_model`) and
# the key PEFT's save_pretrained writes for the same tensor.
_DELTA_LORA_KEY = "llama_model.base_model.model.model.layers.{layer}.self_attn.{proj}.lora_{ab}.default.weight"
_PEFT_LORA_KEY = "base_model.model.model.layers.{layer}.self_attn.{proj}.lora_{ab}.weight"
_DELTA_LORA_RE = re.compile(
    r"^llama_model\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.([qkvo]_proj)\.lora_([AB])\.default\.weight$"
)
_SHOW = 5  # keys named in an error message, per kind


@dataclass(frozen=True)
class DeltaLayout:
    """What the delta's names and shapes say about the model it was trained on."""

    num_layers: int
    hidden_size: int
    rank: int
    projector_in: int  # ImageBind's embedding width

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        h, r = self.hidden_size, self.rank
        shapes: dict[str, tuple[int, ...]] = {PROJ_WEIGHT: (h, self.projector_in), PROJ_BIAS: (h,)}
        for layer in range(self.num_layers):
            for proj in LORA.targets:
                shapes[_DELTA_LORA_KEY.format(layer=layer, proj=proj, ab="A")] = (r, h)
                shapes[_DELTA_LORA_KEY.format(layer=layer, proj=proj, ab="B")] = (h, r)
        return shapes


# --- the delta ---------------------------------------------------------------------


def load_delta(delta: Path) -> dict[str, torch.Tensor]:
    """Load PandaGPT's pytorch_model.pt (given itself or its directory), memory-mapped."""
    path = delta / DELTA_FILE if delta.is_dir() else delta
    if not path.is_file():
        raise FileNotFoundError(f"PandaGPT delta checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as e:  # a legacy (pre-zip) torch.save file cannot be memory-mapped; it is small anyway
        if "mmap" not in str(e):
            raise
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    bad = [str(k) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        raise ValueError(f"{path}: {len(bad)} entries are not named tensors: {_first(bad)}")
    return {k: v.detach() for k, v in state.items()}


def inspect_delta(shapes: Mapping[str, Sequence[int]]) -> DeltaLayout:
    """Infer (layers, hidden, rank) from the delta's key -> shape map and check it strictly.

    Every key must be the projector's or one of the 8 LoRA tensors of layers 0..L-1 (L from
    the highest layer index), each with the shape the inferred sizes give; otherwise a
    ValueError names the missing, unexpected and mis-shaped keys.
    """
    dims = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
    layers = {int(m.group(1)) for m in map(_DELTA_LORA_RE.match, dims) if m}
    if not layers:
        raise ValueError(
            f"no LoRA tensors in the delta (expected keys like {_DELTA_LORA_KEY.format(layer=0, proj='q_proj', ab='A')}"
            f"); its keys: {_first(sorted(dims))}"
        )
    weight = dims.get(PROJ_WEIGHT, ())
    layout = DeltaLayout(
        num_layers=max(layers) + 1,
        hidden_size=_vote(_hidden_candidates(dims)),
        rank=_vote(_rank_candidates(dims)),
        projector_in=weight[1] if len(weight) == 2 else 0,  # 0 only if missing: reported below
    )
    _check_layout(dims, layout)
    return layout


def _hidden_candidates(shapes: Mapping[str, tuple[int, ...]]) -> Iterable[int]:
    for key, shape in shapes.items():
        m = _DELTA_LORA_RE.match(key)
        if key in (PROJ_WEIGHT, PROJ_BIAS) and shape:
            yield shape[0]
        elif m and len(shape) == 2:
            yield shape[1] if m.group(3) == "A" else shape[0]


def _rank_candidates(shapes: Mapping[str, tuple[int, ...]]) -> Iterable[int]:
    for key, shape in shapes.items():
        m = _DELTA_LORA_RE.match(key)
        if m and len(shape) == 2:
            yield shape[0] if m.group(3) == "A" else shape[1]


def _vote(values: Iterable[int]) -> int:
    """The most common value: one mis-shaped tensor is reported, not taken as the truth."""
    counts = Counter(values).most_common(1)
    return counts[0][0] if counts else 0


def _check_layout(shapes: Mapping[str, tuple[int, ...]], layout: DeltaLayout) -> None:
    expected = layout.expected_shapes()
    missing = sorted(expected.keys() - shapes.keys(), key=_natural)
    unexpected = sorted(shapes.keys() - expected.keys(), key=_natural)
    mismatched = [
        f"{k}: {list(shapes[k])} (expected {list(expected[k])})"
        for k in sorted(expected.keys() & shapes.keys(), key=_natural)
        if shapes[k] != expected[k]
    ]
    problems = [
        f"{len(keys)} {kind}: {_first(keys)}"
        for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    if problems:
        raise ValueError(
            f"delta does not match PandaGPT's layout ({layout.num_layers} layers, hidden {layout.hidden_size}, "
            f"LoRA rank {layout.rank} inferred from its keys and shapes): " + "; ".join(problems)
        )


def _natural(key: str) -> list[Any]:
    """Sort layers numerically: layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def _first(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


# --- Vicuna ------------------------------------------------------------------------


def check_vicuna(vicuna: Path, layout: DeltaLayout) -> spm.SentencePieceProcessor:
    """Check the Vicuna dir fits the delta; return its SentencePiece tokenizer."""
    config = _read_llm_config(vicuna)
    if config["hidden_size"] != layout.hidden_size:
        raise ValueError(
            f"hidden size mismatch: the delta's is {layout.hidden_size}, "
            f"{vicuna / 'config.json'} has hidden_size {config['hidden_size']}"
        )
    if config["num_hidden_layers"] != layout.num_layers:
        raise ValueError(
            f"layer count mismatch: the delta has LoRA for {layout.num_layers} layers, "
            f"{vicuna / 'config.json'} has num_hidden_layers {config['num_hidden_layers']}"
        )
    _check_llm_weights(vicuna)
    sp = _load_tokenizer(vicuna)
    check_tokenizer_bos(sp, vicuna / "tokenizer.model")
    vocab = config.get("vocab_size")
    if isinstance(vocab, int) and sp.get_piece_size() > vocab:
        raise ValueError(f"tokenizer.model has {sp.get_piece_size()} pieces but config.json's vocab_size is {vocab}")
    return sp


def _read_llm_config(vicuna: Path) -> dict[str, Any]:
    path = vicuna / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a HF model dir (no config.json): {vicuna}")
    config = json.loads(path.read_text())
    if config.get("model_type", "llama") != "llama":
        raise ValueError(f"{path}: model_type is {config['model_type']!r}, expected 'llama' (Vicuna v0)")
    for key in ("hidden_size", "num_hidden_layers"):
        if not isinstance(config.get(key), int):
            raise ValueError(f"{path}: no integer {key}")
    return config


def _check_llm_weights(vicuna: Path) -> None:
    patterns = ("model*.safetensors", "pytorch_model*.bin")
    if not any(any(vicuna.glob(p)) for p in patterns):
        raise FileNotFoundError(f"no LLM weights in {vicuna} (looked for {' or '.join(patterns)})")


def _load_tokenizer(vicuna: Path) -> spm.SentencePieceProcessor:
    path = vicuna / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"no SentencePiece tokenizer.model in {vicuna}")
    return spm.SentencePieceProcessor(model_file=str(path))


def check_tokenizer_bos(sp: spm.SentencePieceProcessor, where: Path | str = "tokenizer") -> None:
    """PandaGPT prompts start with LLaMA's BOS, id 1; another tokenizer would silently misprompt."""
    if sp.bos_id() != LLAMA_BOS_ID:
        piece = sp.id_to_piece(sp.bos_id()) if 0 <= sp.bos_id() < sp.get_piece_size() else None
        raise ValueError(
            f"{where}: BOS id is {sp.bos_id()} (piece {piece!r}), expected {LLAMA_BOS_ID} as in LLaMA/Vicuna v0"
        )


# --- ImageBind ---------------------------------------------------------------------


def resolve_imagebind_preset(checkpoint: Path) -> tuple[str, ImageBindConfig]:
    """The PRESETS entry whose state-dict keys and shapes are exactly the checkpoint's."""
    if not checkpoint.is_file():
        raise FileNotFoundError(f"ImageBind checkpoint not found: {checkpoint}")
    state = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{checkpoint}: expected an ImageBind state dict, got {type(state).__name__}")
    actual = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    mismatches: dict[str, list[str]] = {}
    for name, config in PRESETS.items():
        diff = _shape_diff(_preset_shapes(config), actual)
        if not diff:
            return name, config
        mismatches[name] = diff
    details = "; ".join(f"{name}: {len(diff)} differences, e.g. {_first(diff)}" for name, diff in mismatches.items())
    raise ValueError(f"{checkpoint} matches no ImageBind preset ({', '.join(PRESETS)}): {details}")


def _preset_shapes(config: ImageBindConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = ImageBindModel(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _shape_diff(expected: Mapping[str, tuple[int, ...]], actual: Mapping[str, tuple[int, ...]]) -> list[str]:
    diff = [f"missing {k}" for k in expected.keys() - actual.keys()]
    diff += [f"unexpected {k}" for k in actual.keys() - expected.keys()]
    diff += [f"{k} {list(actual[k])} != {list(v)}" for k, v in expected.items() if k in actual and actual[k] != v]
    return sorted(diff, key=_natural)


# --- writing -----------------------------------------------------------------------


def convert_pandagpt(vicuna: Path, delta: Path, imagebind: Path, out: Path) -> None:
    """Validate the released checkpoints, then write the bundle to `out` atomically."""
    vicuna, delta, imagebind, out = (Path(p).resolve() for p in (vicuna, delta, imagebind, out))
    check_out(out, inputs=(vicuna, delta, imagebind))
    tensors = load_delta(delta)
    layout = inspect_delta({k: v.shape for k, v in tensors.items()})
    sp = check_vicuna(vicuna, layout)
    preset_name, preset = resolve_imagebind_preset(imagebind)
    if preset.out_embed_dim != layout.projector_in:
        raise ValueError(
            f"projector input width {layout.projector_in} != ImageBind {preset_name!r} embedding width "
            f"{preset.out_embed_dim}"
        )
    manifest = Manifest(
        llm=str(vicuna),
        lora="lora",
        projector="projector.safetensors",
        imagebind=ImageBindSpec(checkpoint=str(imagebind), config=asdict(preset)),
        stop_token_ids=[stop_token_id(sp)],
    )
    write_bundle(out, tensors, layout, manifest)


def write_bundle(
    out: Path,
    tensors: Mapping[str, torch.Tensor],
    layout: DeltaLayout,
    manifest: Manifest,
    lora_alpha: int = LORA.alpha,
    lora_dropout: float = LORA.dropout,
) -> None:
    """The bundle of delta-named tensors (checked by inspect_delta): lora/, projector.safetensors and
    the manifest, atomically. Also what `pandaserve train export` writes."""
    with staged_dir(out) as tmp:
        _write_lora(tmp / "lora", tensors, layout, Path(manifest.llm), lora_alpha, lora_dropout)
        _write_projector(tmp / "projector.safetensors", tensors)
        write_manifest(tmp, manifest)


def check_out(out: Path, inputs: Iterable[Path]) -> None:
    """`out` is replaced wholesale: never let that delete the inputs or a non-bundle dir."""
    for path in inputs:
        if path == out or out in path.parents:
            raise ValueError(f"output {out} would contain the input {path}; the bundle references it, choose another")
    if out.exists() and not (out / "manifest.json").is_file() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not a bundle (no manifest.json); refusing to replace it")


def _write_lora(
    lora_dir: Path,
    tensors: Mapping[str, torch.Tensor],
    layout: DeltaLayout,
    base_model: Path,
    lora_alpha: int,
    lora_dropout: float,
) -> None:
    """A PEFT adapter dir, as PeftModel.save_pretrained writes it (dtype kept: fp16)."""
    lora_dir.mkdir(parents=True)
    spec = LoraSpec(LORA.targets, layout.rank, lora_alpha, lora_dropout)
    config = peft_config(spec, inference_mode=True, base_model_name_or_path=str(base_model))
    config.save_pretrained(str(lora_dir))
    adapter = {
        _PEFT_LORA_KEY.format(layer=layer, proj=proj, ab=ab): _owned(
            tensors[_DELTA_LORA_KEY.format(layer=layer, proj=proj, ab=ab)]
        )
        for layer in range(layout.num_layers)
        for proj in LORA.targets
        for ab in "AB"
    }
    save_file(adapter, str(lora_dir / "adapter_model.safetensors"), metadata={"format": "pt"})


def _write_projector(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    projector = {k: _owned(tensors[k]) for k in (PROJ_WEIGHT, PROJ_BIAS)}
    save_file(projector, str(path), metadata={"format": "pt"})


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous copy, detached from the memory-mapped checkpoint (dtype kept)."""
    return tensor.detach().contiguous().clone()
