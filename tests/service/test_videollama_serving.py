"""Video-LLaMA served: POST /chat's greedy reply ids equal HF `generate(inputs_embeds=...)` on prompt
embeddings built independently here, for images, videos with and without their sound, audio, 1-3
turns, on the Vicuna and the LLaMA-2 template.

The bundles are converted by `pandaserve bundle convert-videollama` from synthetic released files
(tiny shapes, the real key names) over the demo bundle's LLM and ImageBind. The oracle:
    text      the prompt string written here from the original's templates and demo literals, split
              at `<ImageHere>` and tokenized as the original's slow tokenizer did
              (tests/service/families/test_videollama.py's `reference`)
    vectors   the files through our preprocessing (its own references: test_videollama_preprocess.py),
              then Transformers' BLIP-2 classes with the bundle's weights mapped onto them
              (tests/videollama_oracle.py) and ImageBind's per-clip audio embeddings
    reply     HF LlamaForCausalLM.generate, greedy, cut at the template's stop as the demo cut it
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import sentencepiece as spm
import torch
from safetensors.torch import load_file
from transformers import LlamaForCausalLM

from encoders.imagebind import ImageBindConfig, load_imagebind
from encoders.limits import MediaLimits
from encoders.videollama import PRESETS, VideoLlamaAudio, VideoLlamaVision, imagebind_audio_clip_embeddings, preprocess
from service.bundle import load_bundle
from tests.conftest import AUTH, running_encoders, running_server
from tests.encoders.test_audio import make_signal, pyav_bytes
from tests.media import valid
from tests.oracle import greedy_ids
from tests.service.families.test_videollama import AUDIO_VIDEO, VISUAL_SYSTEM, reference
from tests.training.test_convert_videollama import convert
from tests.training.test_videollama_keys import released_files
from tests.videollama_oracle import HFVideoLlama

pytestmark = pytest.mark.e2e

MAX_TOKENS = 10
QUESTIONS = ["What is in this?", "What colour is it?", "Where is it? Answer in one word."]
AUDIO_SENTENCE = "Close your eyes, open your ears and you imagine only based on the sound that: <ImageHere>."


def sounding_video(seed: int) -> bytes:
    rate = 16_000
    return pyav_bytes("mp4", "aac", make_signal(3.0, rate, 1, seed=seed), rate, "libx264", video_seconds=3.0)


def sound(seed: int) -> bytes:
    rate = 16_000
    return pyav_bytes("wav", "pcm_s16le", make_signal(4.0, rate, 1, seed=seed), rate)


# Files per turn as (modality, bytes, does it carry sound the model hears). 1-3 turns.
CASES: dict[str, list[list[tuple[str, bytes]]]] = {
    "image-2turns": [[("image", valid("image", 1))], []],
    "silent-video-3turns": [[("video", valid("video", 2))], [], []],
    "video-with-sound": [[("video", sounding_video(3))]],
    "audio-2turns": [[("audio", sound(4))], []],
    "image-then-video": [[("image", valid("image", 5))], [("video", valid("video", 6))]],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(7)
    vision, audio = VideoLlamaVision(PRESETS["tiny"]).eval(), VideoLlamaAudio(PRESETS["tiny"]).eval()
    eva, blip2, vl, al = released_files(vision, audio)
    root = tmp_path_factory.mktemp("videollama-released")
    paths = {name: root / f"{name}.pth" for name in ("eva", "blip2", "vl", "al")}
    torch.save(eva, paths["eva"])
    for name, state in (("blip2", blip2), ("vl", vl), ("al", al)):
        torch.save({"model": state}, paths[name])
    return paths


class Oracle:
    def __init__(self, bundle_dir: Path, template: str) -> None:
        bundle = load_bundle(bundle_dir)
        spec = bundle.manifest.videollama
        assert spec is not None and spec.audio is not None
        self.template = template
        self.sp = spm.SentencePieceProcessor(model_file=str(bundle.tokenizer_path))
        self.llm = LlamaForCausalLM.from_pretrained(bundle.llm_dir, torch_dtype=torch.float32).eval()
        state = load_file(str(bundle.path(spec.vision))) | load_file(str(bundle.path(spec.audio)))
        config = PRESETS["tiny"]
        self.hf = HFVideoLlama(state, config.vision_heads, config.qformer_heads)
        self.imagebind = load_imagebind(bundle.imagebind_path, ImageBindConfig(**bundle.imagebind.config))
        self.limits = MediaLimits()

    @torch.inference_mode()
    def media_message(self, modality: str, data: bytes) -> tuple[str, list[torch.Tensor], str]:
        """(the upload's message, its slots in placeholder order, the system prompt it would set)."""
        if modality == "image":
            frames = torch.from_numpy(preprocess.load_image(data, "f", self.limits))
            return "<Image><ImageHere></Image> ", [self.hf.video(frames[None])[0]], VISUAL_SYSTEM
        if modality == "audio":
            return AUDIO_SENTENCE, [self.audio(data)], ""
        array, timestamps = preprocess.load_video(data, "f", self.limits)
        vectors = self.hf.video(torch.from_numpy(array)[None])[0]
        try:
            track = self.audio(data)
        except Exception:  # no sound: the demo's video-only message
            return "<Video><ImageHere></Video> " + timestamps, [vectors], ""
        return AUDIO_VIDEO, [track, vectors], ""

    def audio(self, data: bytes) -> torch.Tensor:
        mel = torch.from_numpy(preprocess.load_audio(data, "f", self.limits))[None]
        return self.hf.audio(imagebind_audio_clip_embeddings(self.imagebind, mel))[0]

    def prompt(self, turns: list[tuple[str, str | None]], system: str) -> str:
        """The template's text; `turns`: (user message, reply; None for the turn being asked)."""
        if self.template == "vicuna":
            text = system + "###"
            for user, reply in turns:
                text += f"Human: {user}###"
                if reply is not None:
                    text += f"Assistant: {reply}###" if reply else "Assistant:"
            return text + "Assistant:"
        text = ""
        for i, (user, reply) in enumerate(turns):
            text += f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]" if i == 0 else f"<s>[INST] {user} [/INST]"
            if reply:
                text += f" {reply} </s>"
        return text

    @torch.inference_mode()
    def reply_ids(self, asked: list[tuple[list[tuple[str, bytes]], str]], replies: list[str]) -> list[int]:
        """`asked`: each turn's files and question so far (the last is being asked)."""
        turns: list[tuple[str, str | None]] = []
        slots: list[torch.Tensor] = []
        system = None
        for i, (media, question) in enumerate(asked):
            parts = []
            for modality, data in media:
                message, vectors, own_system = self.media_message(modality, data)
                system = own_system if system is None else system
                parts.append(message)
                slots += vectors
            user = " ".join([*parts, question])
            turns.append((user, replies[i] if i < len(replies) else None))
        assert system is not None
        segments = reference(self.prompt(turns, system), slots, self.sp)
        table = self.llm.get_input_embeddings().weight
        embeds = torch.cat([table[s] if isinstance(s, list) else s for s in segments])
        return self.cut(greedy_ids(self.llm, embeds, MAX_TOKENS))

    def cut(self, ids: list[int]) -> list[int]:
        """The demo's stop: EOS; with Vicuna also "###", one piece or `##` then `#`; the stop is dropped."""
        piece = self.sp.piece_to_id
        for k, token in enumerate(ids):
            if token == 2:
                return ids[:k]
            if self.template == "vicuna" and token == piece("▁###"):
                return ids[:k]
            if self.template == "vicuna" and token == piece("##") and ids[k + 1 : k + 2] == [piece("#")]:
                return ids[:k]
        return ids


@pytest.fixture(scope="module", params=["vicuna", "llama2"])
def served(
    request: pytest.FixtureRequest,
    files: dict[str, Path],
    demo_bundle: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, Oracle]]:
    template = request.param
    bundle = tmp_path_factory.mktemp(f"videollama-{template}") / "bundle"
    convert(files, demo_bundle, bundle, template=template)
    with running_server(bundle, redis_url, tmp_path_factory.mktemp("videollama-server")) as running:
        yield running.url, Oracle(bundle, template)


@pytest.mark.parametrize("case", CASES)
def test_greedy_reply_ids_equal_hf_generate(served: tuple[str, Oracle], case: str) -> None:
    url, oracle = served
    asked: list[tuple[list[tuple[str, bytes]], str]] = []
    replies: list[str] = []
    session_id = None
    with httpx.Client(base_url=url, timeout=120, headers=AUTH) as client:
        for turn, media in enumerate(CASES[case]):
            form = {"message": QUESTIONS[turn], "temperature": "0", "max_tokens": str(MAX_TOKENS)}
            form |= {"return_token_ids": "true"} | ({"session_id": session_id} if session_id else {})
            r = client.post("/chat", data=form, files=[(m, (f"{m}{i}", d)) for i, (m, d) in enumerate(media)])
            assert r.status_code == 200, r.text
            body = r.json()
            asked.append((media, QUESTIONS[turn]))
            assert body["token_ids"] == oracle.reply_ids(asked, replies), f"turn {turn + 1}"
            expected = oracle.sp.decode(body["token_ids"])
            cut = "###" if oracle.template == "vicuna" else "</s>"
            role = "Assistant:" if oracle.template == "vicuna" else "ASSISTANT:"
            assert body["reply"] == expected.split(cut)[0].split(role)[-1].strip()
            session_id = body["session_id"]
            replies.append(body["reply"])


def test_a_video_says_whether_its_sound_was_heard(served: tuple[str, Oracle]) -> None:
    url, _ = served
    with httpx.Client(base_url=url, timeout=120, headers=AUTH) as client:
        upload = [("video", ("with.mp4", sounding_video(8))), ("video", ("without.mp4", valid("video", 9)))]
        r = client.post("/chat", data={"message": "Hi", "max_tokens": "2"}, files=upload)
        assert r.status_code == 200, r.text
        assert [m["sound"] for m in r.json()["media"]] == [True, False]
        r = client.post(
            "/chat", data={"message": "Hi", "max_tokens": "2"}, files=[("image", ("a.png", valid("image", 1)))]
        )
        assert [m["sound"] for m in r.json()["media"]] == [None]
        session = client.get(f"/sessions/{r.json()['session_id']}").json()
        assert session["turns"][0]["media"][0]["sound"] is None


def test_files_video_llama_does_not_take_are_refused_by_name(served: tuple[str, Oracle]) -> None:
    url, _ = served
    with httpx.Client(base_url=url, timeout=120, headers=AUTH) as client:
        r = client.post("/chat", data={"message": "Hi"}, files=[("thermal", ("t.png", valid("thermal", 1)))])
        assert r.status_code == 415 and r.json()["error"]["param"] == "thermal", r.text
        r = client.post("/embeddings", files=[("image", ("a.png", valid("image", 1)))])
        assert r.status_code == 415 and r.json()["error"]["param"] == "image", r.text


def test_the_oracle_sees_the_difference_between_files(served: tuple[str, Oracle]) -> None:
    """A guard on the oracle: two different files give different slots (the comparison means something)."""
    _, oracle = served
    a = oracle.media_message("image", valid("image", 1))[1][0]
    b = oracle.media_message("image", valid("image", 2))[1][0]
    assert a.shape == (32, oracle.llm.config.hidden_size) and not torch.allclose(a, b)
    assert np.isfinite(a.numpy()).all()


def test_through_the_encoder_service(
    files: dict[str, Path], demo_bundle: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`pandaserve encoders serve` on a Video-LLaMA bundle, behind an API replica: a video's audio track
    and timestamp sentence travel with its vectors, and the reply is the reference's."""
    bundle = tmp_path_factory.mktemp("videollama-remote") / "bundle"
    convert(files, demo_bundle, bundle, template="vicuna")
    logs = tmp_path_factory.mktemp("videollama-remote-logs")
    video = sounding_video(21)
    with (
        running_encoders(bundle, redis_url, logs) as encoders,
        running_server(bundle, redis_url, logs, {"PANDASERVE_ENCODER_URL": encoders.url}) as replica,
    ):
        form = {"message": QUESTIONS[0], "temperature": "0", "max_tokens": str(MAX_TOKENS), "return_token_ids": "true"}
        r = httpx.post(f"{replica.url}/chat", data=form, files=[("video", ("v.mp4", video))], headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        assert r.json()["media"][0]["sound"] is True
        assert r.json()["token_ids"] == Oracle(bundle, "vicuna").reply_ids([([("video", video)], QUESTIONS[0])], [])
