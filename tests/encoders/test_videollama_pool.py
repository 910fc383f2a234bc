"""Video-LLaMA's encoders in the pool: each file's soft prompt equals the branches run on it directly
(a video with its sound: two slots and its timestamp sentence; without: one), batches across
requests change nothing, cached results round-trip exactly, and what it does not take is refused."""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest
import torch

from encoders.cache import EmbeddingCache
from encoders.errors import UnsupportedMediaType
from encoders.imagebind import ImageBindConfig, ImageBindModel, load_imagebind
from encoders.limits import MediaLimits
from encoders.media import MediaInput, SoftPrompt
from encoders.pool import Batching
from encoders.videollama import PRESETS, VideoLlamaAudio, VideoLlamaVision, imagebind_audio_clip_embeddings, preprocess
from encoders.videollama.pool import VideoLlamaEncoder, VideoLlamaPool
from tests.encoders.test_pool import Recorder
from tests.media import valid
from tests.service.test_videollama_serving import sound, sounding_video

pytestmark = pytest.mark.integration

LIMITS = MediaLimits()


@pytest.fixture(scope="module")
def branches(demo_bundle: Path) -> tuple[VideoLlamaVision, VideoLlamaAudio, ImageBindModel]:
    torch.manual_seed(3)
    manifest = json.loads((demo_bundle / "manifest.json").read_text())
    imagebind = load_imagebind(
        demo_bundle / manifest["imagebind"]["checkpoint"], ImageBindConfig(**manifest["imagebind"]["config"])
    )
    return VideoLlamaVision(PRESETS["tiny"]).eval(), VideoLlamaAudio(PRESETS["tiny"]).eval(), imagebind


def pool(branches: tuple[VideoLlamaVision, VideoLlamaAudio, ImageBindModel], **options: object) -> VideoLlamaPool:
    vision, audio, imagebind = branches
    return VideoLlamaPool(vision, audio, imagebind, LIMITS, batching=Batching(max_wait_ms=300), **options)  # type: ignore[arg-type]


@torch.inference_mode()
def direct(branches: tuple[VideoLlamaVision, VideoLlamaAudio, ImageBindModel], item: MediaInput) -> SoftPrompt:
    vision, audio, imagebind = branches

    def heard(data: bytes) -> torch.Tensor:
        mel = torch.from_numpy(preprocess.load_audio(data, item.field, LIMITS))[None]
        return audio(imagebind_audio_clip_embeddings(imagebind, mel))[0]

    if item.modality == "image":
        return SoftPrompt(vision(torch.from_numpy(preprocess.load_image(item.data, item.field, LIMITS))[None])[0])
    if item.modality == "audio":
        return SoftPrompt(heard(item.data))
    frames, timestamps = preprocess.load_video(item.data, item.field, LIMITS)
    track = heard(item.data) if item.field.startswith("sounding") else None
    return SoftPrompt(vision(torch.from_numpy(frames)[None])[0], track, timestamps)


def assert_same(a: SoftPrompt, b: SoftPrompt) -> None:
    torch.testing.assert_close(a.vectors, b.vectors, rtol=1e-5, atol=1e-5)
    assert a.timestamps == b.timestamps
    assert (a.audio_track is None) == (b.audio_track is None)
    if a.audio_track is not None and b.audio_track is not None:
        torch.testing.assert_close(a.audio_track, b.audio_track, rtol=1e-5, atol=1e-5)


ITEMS = [
    MediaInput("image", valid("image", 1), "image[0]"),
    MediaInput("image", valid("image", 2), "image[1]"),
    MediaInput("video", valid("video", 3), "silent[0]"),
    MediaInput("video", sounding_video(4), "sounding[0]"),
    MediaInput("audio", sound(5), "audio[0]"),
]


async def test_each_file_equals_the_branches_run_on_it(
    branches: tuple[VideoLlamaVision, VideoLlamaAudio, ImageBindModel],
) -> None:
    recorder = Recorder()
    p = pool(branches, observer=recorder)
    try:
        results = await asyncio.gather(*(p.encode([item]) for item in ITEMS))  # concurrent: batched
        assert max(size for _, size in recorder.batches) > 1
        for item, [result] in zip(ITEMS, results, strict=True):
            assert_same(result, direct(branches, item))
        silent, sounding = results[2][0], results[3][0]
        assert silent.audio_track is None and sounding.audio_track is not None
        assert sounding.audio_track.shape == (8, PRESETS["tiny"].llm_hidden_size)
        assert silent.vectors.shape == (32, PRESETS["tiny"].llm_hidden_size)
        assert silent.timestamps.startswith("The video contains ")
    finally:
        await p.close()


async def test_cached_results_round_trip_exactly(
    branches: tuple[VideoLlamaVision, VideoLlamaAudio, ImageBindModel],
) -> None:
    recorder = Recorder()
    cache = EmbeddingCache(secrets.token_hex(8), 2**24, None, recorder)
    p = pool(branches, cache=cache, observer=recorder)
    try:
        item = ITEMS[3]
        [cold] = await p.encode([item])
        [warm] = await p.encode([item])
        assert recorder.decoded_files() == 1
        assert torch.equal(warm.vectors, cold.vectors) and warm.timestamps == cold.timestamps
        assert warm.audio_track is not None and cold.audio_track is not None
        assert torch.equal(warm.audio_track, cold.audio_track)
    finally:
        await p.close()


async def test_what_it_does_not_take_is_refused_by_name(
    branches: tuple[VideoLlamaVision, VideoLlamaAudio, ImageBindModel],
) -> None:
    vision, _, _ = branches
    visual = VideoLlamaPool(vision, None, None, LIMITS)  # a bundle without the audio branch
    encoder = VideoLlamaEncoder(visual)
    try:
        assert visual.modalities == ["image", "video"]
        with pytest.raises(UnsupportedMediaType, match=r"^audio\[0\]: "):
            await encoder.soft_prompts([ITEMS[4]])
        with pytest.raises(UnsupportedMediaType, match=r"^thermal\[0\]: "):
            await encoder.soft_prompts([MediaInput("thermal", valid("thermal", 1), "thermal[0]")])
        with pytest.raises(UnsupportedMediaType, match=r"^image\[0\]: .*not ImageBind embeddings"):
            await encoder.encode([ITEMS[0]])
        # Without the audio branch a video is its frames alone, whatever its sound.
        [video] = await encoder.soft_prompts([ITEMS[3]])
        assert video.audio_track is None and video.timestamps
    finally:
        await encoder.close()
    with pytest.raises(ValueError, match="give both or neither"):
        VideoLlamaPool(vision, branches[1], None, LIMITS)
