"""The fidelity oracle: PandaGPT's path rebuilt in the tests, independently of service/.

Preprocessing comes from the references written in tests/encoders from the original's facts;
the projector is read from its safetensors; the template and stop rule are written out again;
the LLM is HF transformers + PEFT (LoRA unmerged). Only the ImageBind forward is shared with
the service (it is checked against its own facts in tests/encoders/test_imagebind.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from safetensors.torch import load_file

from encoders.imagebind import ImageBindConfig, load_imagebind


def peft_model(llm: Path, lora: Path) -> torch.nn.Module:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llm, dtype=torch.float32), lora)


def references() -> dict[str, tuple[str, Callable[[bytes], np.ndarray]]]:
    """modality -> (ImageBind branch, reference preprocessing), in PandaGPT's slot order."""
    from tests.encoders import test_audio, test_depth, test_image, test_imu, test_video

    return {
        "image": ("vision", test_image.reference),
        "audio": ("audio", test_audio.reference),
        "video": ("vision", test_video.reference),
        "thermal": ("thermal", test_image.reference_thermal),
        "depth": ("depth", test_depth.reference),
        "imu": ("imu", test_imu.reference),
    }


def greedy_ids(llm: torch.nn.Module, embeds: torch.Tensor, max_tokens: int) -> list[int]:
    """HF `generate` from prompt embeddings [L, hidden]: greedy, ending at EOS (id 2) at the latest."""
    out = llm.generate(  # type: ignore[operator]
        inputs_embeds=embeds[None],
        attention_mask=torch.ones((1, len(embeds)), dtype=torch.long),
        max_new_tokens=max_tokens,
        do_sample=False,
        eos_token_id=2,
        pad_token_id=2,
    )
    return out[0].tolist()


class Oracle:
    def __init__(self, bundle: Path, llm: torch.nn.Module | None = None) -> None:
        """`llm`: an HF + PEFT model loaded some other way; by default the bundle's, with PEFT's loader."""
        manifest = json.loads((bundle / "manifest.json").read_text())
        path = lambda p: bundle / p  # noqa: E731  (absolute manifest paths survive the join)
        self.sp = spm.SentencePieceProcessor(model_file=str(path(manifest["llm"]) / "tokenizer.model"))
        self.stop_ids = manifest["stop_token_ids"]
        self.llm = (llm or peft_model(path(manifest["llm"]), path(manifest["lora"]))).eval()
        config = ImageBindConfig(**manifest["imagebind"]["config"])
        self.imagebind = load_imagebind(path(manifest["imagebind"]["checkpoint"]), config)
        proj = load_file(str(path(manifest["projector"])))
        self.proj_w, self.proj_b = proj["llama_proj.weight"].float(), proj["llama_proj.bias"].float()
        self.references = references()

    @torch.inference_mode()
    def embedding(self, modality: str, data: bytes) -> torch.Tensor:
        """ImageBind's 1024-d embedding of one file, clips/crops averaged inside the model."""
        branch, reference = self.references[modality]
        x = torch.tensor(reference(data))[None]  # a copy: references may return read-only views
        return self.imagebind({branch: x})[branch][0]

    @torch.inference_mode()
    def slot(self, media: list[tuple[str, bytes]]) -> torch.Tensor:
        # Each medium projected with its bias, then summed: the bias counts once per medium.
        out = torch.zeros(self.proj_b.shape)
        for modality, data in media:
            out += self.embedding(modality, data) @ self.proj_w.T + self.proj_b
        return out

    @staticmethod
    def after_text(history: list[tuple[str, str]], message: str) -> str:
        text = ""
        for i, (q, a) in enumerate(history):
            text += f"{q}\n### Assistant: {a}\n###" if i == 0 else f" Human: {q}\n### Assistant: {a}\n###"
        text += f"{message}" if not history else f" Human: {message}"
        return "</Img> " + text + "\n### Assistant:"

    @torch.inference_mode()
    def reply_ids(
        self, history: list[tuple[str, str]], message: str, media: list[tuple[str, bytes]], max_tokens: int
    ) -> list[int]:
        table = self.llm.get_input_embeddings().weight
        before = [1] + self.sp.encode("### Human: <Img>")  # BOS by hand, then the segment alone
        after = self.sp.encode(self.after_text(history, message))
        embeds = torch.cat([table[before], self.slot(media)[None], table[after]])
        out = greedy_ids(self.llm, embeds, max_tokens)
        # The stop rule, written out: at the first `##`, drop it and the token before it.
        for k, token in enumerate(out):
            if token in self.stop_ids:
                return out[: max(k - 1, 0)]
        return out[:-1] if out and out[-1] == 2 else out


REPLY_TOKENS = 12  # per turn: enough to compare, cheap on CPU


def assert_served_chat_equals(
    base_url: str | list[str], oracle: Oracle, messages: list[str], media: list[tuple[str, bytes]]
) -> None:
    """One greedy turn per message over HTTP, the media with the first: every reply's token ids equal
    the oracle's for the same conversation. Several base URLs (API replicas) take the turns in turn."""
    import httpx

    from tests.conftest import AUTH

    history: list[tuple[str, str]] = []
    session_id = None
    urls = [base_url] if isinstance(base_url, str) else base_url
    with httpx.Client(timeout=120, headers=AUTH) as client:
        for turn, message in enumerate(messages):
            form = {"message": message, "temperature": "0", "max_tokens": str(REPLY_TOKENS), "return_token_ids": "true"}
            form |= {"session_id": session_id} if session_id else {}
            files = [(m, (m, data)) for m, data in media] if turn == 0 else None
            r = client.post(urls[turn % len(urls)] + "/chat", data=form, files=files)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["token_ids"] == oracle.reply_ids(history, message, media, REPLY_TOKENS), f"turn {turn}"
            session_id = body["session_id"]
            history.append((message, body["reply"]))
