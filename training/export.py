"""Export a training checkpoint as a model bundle, and optionally as PandaGPT's delta checkpoint.

    pandaserve train export runs/x OUT_BUNDLE [--delta DIR]

CKPT is a run directory (its latest checkpoint), its `checkpoints/` directory, or one checkpoint
(`checkpoints/step-NNNNNN`). The bundle holds the PEFT adapter, `projector.safetensors` and the
manifest; the base LLM and ImageBind are referenced by absolute path, as `convert-pandagpt` does
(the same writer). `--delta DIR` also writes DIR/pytorch_model.pt: the trainable tensors under the
original's key names, which is what the original saved and what `convert-pandagpt` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import load_file

from service.bundle import ImageBindSpec, Manifest
from training.convert import DELTA_FILE, check_out, check_tokenizer_bos, inspect_delta, write_bundle
from training.tokenizer import stop_token_id
from training.train import CHECKPOINTS, EXPORT_INFO, TRAINABLE


def resolve_checkpoint(ckpt: Path) -> Path:
    """The checkpoint directory that CKPT names (following DeepSpeed's `latest` file)."""
    for candidate in (ckpt, ckpt / CHECKPOINTS):
        if (candidate / EXPORT_INFO).is_file():
            return candidate
        if (candidate / "latest").is_file():
            tagged = candidate / (candidate / "latest").read_text().strip()
            if (tagged / EXPORT_INFO).is_file():
                return tagged
    raise FileNotFoundError(f"no training checkpoint at {ckpt} (looked for {EXPORT_INFO}, or a 'latest' file)")


def export_checkpoint(ckpt: Path, out: Path, delta: Path | None = None) -> Path:
    """Write the bundle to `out` (atomically) and, if asked, the delta; return the checkpoint used."""
    directory = resolve_checkpoint(Path(ckpt)).resolve()
    info = json.loads((directory / EXPORT_INFO).read_text())
    tensors = load_file(str(directory / TRAINABLE))
    layout = inspect_delta({k: v.shape for k, v in tensors.items()})  # names and shapes, strictly
    llm, imagebind = Path(info["llm"]), Path(info["imagebind"]["checkpoint"])
    out = Path(out).resolve()
    check_out(out, inputs=(llm, imagebind, directory))
    sp = spm.SentencePieceProcessor(model_file=str(llm / "tokenizer.model"))
    check_tokenizer_bos(sp, llm / "tokenizer.model")
    manifest = Manifest(
        llm=str(llm),
        imagebind=ImageBindSpec(checkpoint=str(imagebind), config=info["imagebind"]["config"]),
        stop_token_ids=[stop_token_id(sp)],
    )
    write_bundle(out, tensors, layout, manifest, lora_alpha=info["lora"]["alpha"], lora_dropout=info["lora"]["dropout"])
    if delta is not None:
        write_delta(Path(delta), tensors)
    return directory


def write_delta(directory: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """DIR/pytorch_model.pt as the original's save_model wrote it: a dict of the trainable tensors."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / DELTA_FILE
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(tensors), tmp)
    tmp.rename(path)
    return path
