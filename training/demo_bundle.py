"""Build the tiny PandaGPT demo bundle with random weights: the real weights' formats at a few MB.

These are the parts training/demo_recipe.py then trains (`pandaserve bundle demo`); the random
bundle itself (`--random`) is what most tests serve and compare with HF + PEFT.

Layout (see service.bundle):
    manifest.json          names the parts below
    llm/                   HF LLaMA dir (config, model.safetensors, tokenizer.model/.json)
    lora/                  PEFT adapter dir (adapter_config.json, adapter_model.safetensors)
    projector.safetensors  llama_proj.weight [hidden, 1024], llama_proj.bias [hidden]
    imagebind.pth          torch.save of a tiny ImageBind state dict, original key names

Everything is deterministic from `seed` (the tokenizer does not depend on it at all),
and all random tensors come from explicitly seeded generators, never from the caller's
global RNG state.

Usage: pandaserve bundle demo OUT_DIR --random [--seed N]
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sentencepiece as spm
import torch
from safetensors.torch import save_file

from service.bundle import ImageBindSpec, Manifest, write_manifest
from service.families.pandagpt import LORA
from training.model import peft_config
from training.staging import staged_dir
from training.tokenizer import stop_token_id, train_sentencepiece, write_hf_tokenizer

if TYPE_CHECKING:  # heavy imports stay lazy: `import training.demo_bundle` is cheap
    from transformers import LlamaForCausalLM

HIDDEN_SIZE = 256
NUM_HEADS = 4  # head dim 64: vLLM's CPU attention supports {32, 64, 80, ...}
NUM_LAYERS = 2
INTERMEDIATE_SIZE = 688
MAX_POSITIONS = 2048
IMAGEBIND_DIM = 1024  # ImageBind's output width, the projector's input
# Larger than LLaMA's 0.02: in a 2-layer random model a small init leaves attention
# near-uniform and the residual stream dominated by the current token's embedding, so
# outputs would barely depend on context (prompt, image, LoRA), which tests compare.
INIT_STD = 0.1
# The output head is scaled up further (final hidden states are RMS-normalised, norm
# ~sqrt(hidden), so logits get std ~LM_HEAD_STD * 16): a peaked softmax keeps the
# top-1 probability far above 0.01, so PandaGPT's top_p=0.01 sampling is truly greedy.
LM_HEAD_STD = 1.0
# LoRA factors: with r=32, alpha=32 (scale 1) each delta entry has std
# sqrt(32) * 0.1 * 0.1 ~= 0.057, about half the base weights', so the adapter visibly
# changes the logits (PEFT's default zero lora_B would make it a no-op).
LORA_STD = 0.1
# Projected ImageBind embeddings (unit-norm input) get entries of std ~0.3, larger
# than the token embeddings', so the image demonstrably steers generation.
PROJECTOR_STD = 0.3


def build_demo_bundle(out: Path, seed: int = 0) -> None:
    """Write the random-weight demo bundle to `out`, atomically (a crash never leaves half a bundle)."""
    with staged_dir(Path(out)) as tmp, quiet_progress_bars():
        write_parts(tmp, seed)


def write_parts(root: Path, seed: int, seeing_vision: bool = False) -> None:
    """Every file of the bundle into `root`; `seeing_vision` sets ImageBind's vision trunk to
    training/demo_vision.py's features (the trained demo's first stage) instead of random weights."""
    llm_dir = root / "llm"
    sp_model = train_sentencepiece()
    write_hf_tokenizer(llm_dir, sp_model)
    sp = spm.SentencePieceProcessor(model_proto=sp_model)
    model = _write_llm(llm_dir, vocab_size=sp.get_piece_size(), seed=seed)
    _write_lora(model, root / "lora", seed=seed)
    _write_projector(root / "projector.safetensors", hidden=HIDDEN_SIZE, seed=seed)
    imagebind_config = _write_imagebind(root / "imagebind.pth", seed=seed, seeing_vision=seeing_vision)
    manifest = Manifest(
        llm="llm",
        lora="lora",
        projector="projector.safetensors",
        imagebind=ImageBindSpec(checkpoint="imagebind.pth", config=imagebind_config),
        stop_token_ids=[stop_token_id(sp)],
    )
    write_manifest(root, manifest)


def _generator(seed: int, stream: int) -> torch.Generator:
    # One independent stream per component, so changing one part's shapes or draw
    # order never changes another part's weights.
    return torch.Generator().manual_seed(seed * 1_000 + stream)


def _fill_(tensors: Iterator[tuple[str, torch.Tensor]], gen: torch.Generator, std: float) -> None:
    """Overwrite parameters in a fixed (sorted-name) order: norms to 1, others N(0, std)."""
    with torch.no_grad():
        for name, tensor in sorted(tensors, key=lambda item: item[0]):
            if tensor.ndim == 1 and "norm" in name:
                tensor.fill_(1.0)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * std)


def _write_llm(llm_dir: Path, vocab_size: int, seed: int) -> LlamaForCausalLM:
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        initializer_range=INIT_STD,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,  # Vicuna v0: pad = eos
        tie_word_embeddings=False,
        dtype="float32",
    )
    with _seeded_global_rng(seed):  # HF's own init is overwritten below anyway
        model = LlamaForCausalLM(config)
    _fill_(model.named_parameters(), _generator(seed, 1), INIT_STD)
    with torch.no_grad():
        model.lm_head.weight.mul_(LM_HEAD_STD / INIT_STD)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.eval()
    model.save_pretrained(str(llm_dir), safe_serialization=True)
    return model


def _write_lora(model: LlamaForCausalLM, lora_dir: Path, seed: int) -> None:
    from peft import get_peft_model

    lora_config = peft_config(LORA, init_lora_weights=False)  # we fill A and B ourselves, B non-zero
    peft_model = get_peft_model(model, lora_config)
    lora_params = ((n, p) for n, p in peft_model.named_parameters() if "lora_" in n)
    _fill_(lora_params, _generator(seed, 2), LORA_STD)
    # Relative and harmless: the serving code passes the base model explicitly.
    peft_model.peft_config["default"].base_model_name_or_path = "llm"
    # No embedding layers are targeted; "auto" would probe the Hub for the base config.
    peft_model.save_pretrained(str(lora_dir), safe_serialization=True, save_embedding_layers=False)
    # PEFT's auto-generated model card is a template about a Hub model: not ours.
    (lora_dir / "README.md").unlink(missing_ok=True)


def _write_projector(path: Path, hidden: int, seed: int) -> None:
    gen = _generator(seed, 3)
    tensors = {
        "llama_proj.weight": torch.randn(hidden, IMAGEBIND_DIM, generator=gen) * PROJECTOR_STD,
        "llama_proj.bias": torch.randn(hidden, generator=gen) * 0.02,  # small, like a trained bias
    }
    save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(path))


def _write_imagebind(path: Path, seed: int, seeing_vision: bool) -> dict[str, Any]:
    """Save a tiny ImageBind initialised by its own (upstream-style) init, seeded."""
    from encoders.imagebind import PRESETS, ImageBindModel
    from training import demo_vision

    config = demo_vision.config() if seeing_vision else PRESETS["tiny"]
    with _seeded_global_rng(seed):
        model = ImageBindModel(config)
    if seeing_vision:
        demo_vision.set_vision_weights_(model, seed)
    torch.save(model.state_dict(), path)
    return asdict(config)


@contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed torch's global RNG for code that only draws from it, restoring it after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide transformers' "Writing model shards" bar for a 1-shard tiny model."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
