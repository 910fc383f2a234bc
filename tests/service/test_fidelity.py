"""Fidelity oracle: POST /chat's greedy reply ids equal HF transformers + PEFT generate(inputs_embeds).

The oracle side is built here from the PandaGPT facts, independently of service/: the image
preprocessing is the reference of tests/encoders/test_image.py, the projector is read from its
safetensors, the template and stop rule are written out again, and the LLM is HF + PEFT
(LoRA unmerged). Only the ImageBind forward is shared (it is checked against its own facts).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image
from safetensors.torch import load_file

from encoders.imagebind import ImageBindConfig, load_imagebind
from tests.encoders.test_image import reference as preprocess_reference

MAX_TOKENS = 12


class Oracle:
    def __init__(self, bundle: Path) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        manifest = json.loads((bundle / "manifest.json").read_text())
        self.sp = spm.SentencePieceProcessor(model_file=str(bundle / "llm" / "tokenizer.model"))
        self.stop_ids = manifest["stop_token_ids"]
        base = AutoModelForCausalLM.from_pretrained(bundle / "llm", dtype=torch.float32)
        self.llm = PeftModel.from_pretrained(base, bundle / "lora").eval()
        self.imagebind = load_imagebind(bundle / "imagebind.pth", ImageBindConfig(**manifest["imagebind"]["config"]))
        proj = load_file(str(bundle / "projector.safetensors"))
        self.proj_w, self.proj_b = proj["llama_proj.weight"], proj["llama_proj.bias"]

    @torch.inference_mode()
    def slot(self, images: list[bytes]) -> torch.Tensor:
        pixels = torch.from_numpy(np.stack([preprocess_reference(b) for b in images]))
        embeddings = self.imagebind({"vision": pixels})["vision"]
        # Each medium projected with its bias, then summed: the bias counts once per medium.
        return sum((e @ self.proj_w.T + self.proj_b for e in embeddings), torch.zeros(self.proj_b.shape))

    def after_text(self, history: list[tuple[str, str]], message: str) -> str:
        text = ""
        for i, (q, a) in enumerate(history):
            text += f"{q}\n### Assistant: {a}\n###" if i == 0 else f" Human: {q}\n### Assistant: {a}\n###"
        text += f"{message}" if not history else f" Human: {message}"
        return "</Img> " + text + "\n### Assistant:"

    @torch.inference_mode()
    def reply_ids(self, history: list[tuple[str, str]], message: str, images: list[bytes]) -> list[int]:
        table = self.llm.get_input_embeddings().weight
        before = [1] + self.sp.encode("### Human: <Img>")  # BOS by hand, then the segment alone
        after = self.sp.encode(self.after_text(history, message))
        embeds = torch.cat([table[before], self.slot(images)[None], table[after]])[None]
        out = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=2,
        )[0].tolist()
        # The stop rule, written out: at the first `##`, drop it and the token before it.
        for k, token in enumerate(out):
            if token in self.stop_ids:
                return out[: max(k - 1, 0)]
        return out[:-1] if out and out[-1] == 2 else out


def picture(seed: int, size: tuple[int, int], fmt: str = "PNG") -> bytes:
    """A deterministic picture with structure (gradient + a coloured box), not just noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx * 255 // w), (yy * 255 // h), np.full((h, w), rng.integers(0, 256))], -1).astype(np.uint8)
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    arr[y0 : y0 + h // 3, x0 : x0 + w // 3] = rng.integers(0, 256, 3)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def oracle(demo_bundle: Path) -> Oracle:
    return Oracle(demo_bundle)


# (media per turn): 1-, 2- and 3-turn chats with 1-3 images; the last case adds media in a later turn,
# which joins the slot sum (our documented extension; the original ignored later media).
CASES = {
    "1turn-1image": [[0]],
    "1turn-3images": [[1, 2, 3]],
    "2turns-2images": [[4, 5], []],
    "3turns-1image": [[6], [], []],
    "3turns-3images": [[7, 8, 9], [], []],
    "3turns-later-media": [[10], [11], [12]],
}
QUESTIONS = ["What is in this image?", "What colour is the box?", "Where is it? Answer in one word."]
SIZES = [(320, 240), (200, 300), (224, 224), (640, 360)]


@pytest.mark.parametrize("case", CASES)
def test_greedy_reply_ids_equal_hf_peft(server: str, oracle: Oracle, case: str) -> None:
    history: list[tuple[str, str]] = []
    images_so_far: list[bytes] = []
    session_id = None
    with httpx.Client(base_url=server, timeout=120) as client:
        for turn, seeds in enumerate(CASES[case]):
            images = [picture(s, SIZES[s % len(SIZES)], "JPEG" if s % 2 else "PNG") for s in seeds]
            form = {
                "message": QUESTIONS[turn],
                "temperature": "0",
                "max_tokens": str(MAX_TOKENS),
                "return_token_ids": "true",
            }
            if session_id:
                form["session_id"] = session_id
            files = [("image", (f"{i}.img", data)) for i, data in enumerate(images)]
            r = client.post("/chat", data=form, files=files)
            assert r.status_code == 200, r.text
            body = r.json()

            images_so_far += images
            expected = oracle.reply_ids(history, QUESTIONS[turn], images_so_far)
            assert body["token_ids"] == expected, f"turn {turn + 1}"
            assert body["reply"] == oracle.sp.decode(expected)
            session_id = body["session_id"]
            history.append((QUESTIONS[turn], body["reply"]))
