"""The audio path against a reference written here from the original's facts, and its errors.

`reference(data)` is ImageBind's `load_and_transform_audio_data` for one file, spelled out in
NumPy float64: soundfile decoding (WAV/FLAC/OGG), the direct windowed-sinc resampler of
test_resample, pytorchvideo's clip arithmetic, the in-place shared mean subtraction, the Kaldi
fbank of test_fbank, pad/cut to 204 frames, normalisation. Our float32 path matches it to 1e-3
after normalisation (1e-3 x 9.138 ~ 9e-3 in log-mel; measured differences are ~1e-4).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
import pytest
import soundfile as sf
import torch

import encoders.audio as audio_module
from encoders.audio import load_audio, preprocess_audio, sniff_audio
from encoders.clips import clip_timepoints
from encoders.errors import InvalidMedia, MediaError, MediaTooLarge, UnsupportedMediaType
from encoders.limits import MediaLimits
from tests.encoders.test_fbank import reference_fbank
from tests.encoders.test_resample import reference_resample

pytestmark = pytest.mark.unit

FIELD = "audio[0]"
LIMITS = MediaLimits()
TOLERANCE = 1e-3  # after normalisation, see the module docstring
MEAN, STD = -4.268, 9.138


# --- the reference -------------------------------------------------------------------------------


def reference_clips(duration: float, clips: int = 3, pytorchvideo: str = "fixed") -> list[tuple[Fraction, Fraction]]:
    """pytorchvideo's ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=clips) via
    get_clip_timepoints: after its fix of 2022-04-28 (ImageBind's pin) the spacing divides by
    max(clips - 1, 1); in 0.1.5 (Video-LLaMA's pin) by clips."""
    clip_duration = Fraction(2)
    max_possible_clip_start = Fraction(max(duration - clip_duration, 0))
    uniform_clip = Fraction(max_possible_clip_start, max(clips - 1, 1) if pytorchvideo == "fixed" else clips)
    return [(uniform_clip * i, uniform_clip * i + clip_duration) for i in range(clips)]


def reference_from_waveform(
    waveform: np.ndarray,
    rate: int,
    in_place: bool = True,
    mean_channels: str = "all",
    clips: Callable[[float], list[tuple[Fraction, Fraction]]] = reference_clips,
) -> np.ndarray:
    """(channels, N) at `rate` -> (clips, 1, 128, 204). `in_place`, `mean_channels` turn the original's
    quirks off."""
    wave = np.array(waveform, dtype=np.float64)
    if rate != 16_000:
        wave = reference_resample(wave, rate, 16_000)
    mels = []
    for start, end in clips(wave.shape[1] / 16_000):
        clip = wave[:, int(start * 16_000) : int(end * 16_000)]  # a view: the shift below lands in `wave`
        if not in_place:
            clip = clip.copy()
        clip -= clip.mean() if mean_channels == "all" else clip[0].mean()
        fb = reference_fbank(clip[0], 128).T  # (128, frames)
        frames = np.zeros((128, 204))
        frames[:, : min(204, fb.shape[1])] = fb[:, :204]
        mels.append((frames - MEAN) / STD)
    return np.stack(mels)[:, None].astype(np.float32)


def reference(data: bytes) -> np.ndarray:
    """ImageBind's audio preprocessing of one WAV/FLAC/OGG file (soundfile decodes it): float32 (3, 1, 128, 204)."""
    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # int PCM -> x / 2**(bits-1)
    return reference_from_waveform(samples.T, rate)


# --- fixtures made in code -----------------------------------------------------------------------


def make_signal(seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """(N, channels) float32: a gliding voice with harmonics, an envelope, noise and a DC offset per channel."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    phase = 2 * np.pi * np.cumsum(140 + 30 * np.sin(2 * np.pi * 0.7 * t)) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 40) if 170 * k < 0.45 * rate)
    voice = 0.25 * voice * (0.3 + 0.7 * np.sin(2 * np.pi * 2.5 * t) ** 2)
    out = [voice + 0.02 * rng.standard_normal(n) + 0.05]
    out += [0.6 * np.roll(voice, 37 * c) + 0.05 * rng.standard_normal(n) - 0.1 * c for c in range(1, channels)]
    return np.clip(np.stack(out, axis=1), -1, 1).astype(np.float32)


def soundfile_bytes(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def needs_codecs(*names: str) -> pytest.MarkDecorator:
    missing = [name for name in names if name not in av.codecs_available]
    return pytest.mark.skipif(bool(missing), reason=f"PyAV's wheel lacks the codecs {missing}")


def pyav_bytes(
    container: str,
    audio_codec: str | None,
    samples: np.ndarray | None,
    rate: int,
    video_codec: str | None = None,
    video_seconds: float = 0.0,
) -> bytes:
    """Encode (N, channels) float32 audio and/or a small moving-gray video into `container`."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        # Every stream is added before the first packet is muxed (the header is written then).
        vstream = astream = None
        if video_codec is not None:
            vstream = out.add_stream(video_codec, rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        layout = "mono" if samples is None or samples.shape[1] == 1 else "stereo"
        if audio_codec is not None and samples is not None:
            astream = out.add_stream(audio_codec, rate=rate, layout=layout)
        if vstream is not None:
            for i in range(int(video_seconds * 10)):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), (i * 20) % 256, dtype=np.uint8), format="rgb24")
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
        if astream is not None and samples is not None:
            planar = np.ascontiguousarray(samples.T)
            for start in range(0, planar.shape[1], 1024):
                chunk = np.ascontiguousarray(planar[:, start : start + 1024])
                aframe = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
                aframe.sample_rate = rate
                aframe.pts = start
                aframe.time_base = Fraction(1, rate)
                out.mux(astream.encode(aframe))
            out.mux(astream.encode(None))
    return buf.getvalue()


def pyav_decode(data: bytes) -> tuple[np.ndarray, int]:
    """The first audio stream as (channels, N) float64, converted here by hand from the decoder's sample format."""
    scale = {"flt": 1.0, "dbl": 1.0, "s16": 32768.0, "s32": 2.0**31}
    parts, rate = [], 0
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(container.streams.audio[0]):
            rate = frame.sample_rate
            arr = frame.to_ndarray().astype(np.float64)
            if not frame.format.is_planar:
                arr = arr.reshape(-1, len(frame.layout.channels)).T
            parts.append(arr / scale[frame.format.packed.name])
    return np.concatenate(parts, axis=1), rate


def assert_matches(ours: np.ndarray, expected: np.ndarray, clips: int = 3) -> None:
    assert ours.shape == (clips, 1, 128, 204)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE, rtol=0)


# --- clip sampling and the in-place mean ---------------------------------------------------------


def test_clip_timepoints() -> None:
    assert clip_timepoints(1.0, 3) == [(Fraction(0), Fraction(2))] * 3
    assert clip_timepoints(2.0, 3) == [(Fraction(0), Fraction(2))] * 3
    assert clip_timepoints(4.0, 3) == [
        (Fraction(0), Fraction(2)),
        (Fraction(1), Fraction(3)),
        (Fraction(2), Fraction(4)),
    ]
    # 7.3 s: the float 7.3 - 2 (exact: same binade) as a Fraction, split in two.
    spacing = (Fraction(7.3) - 2) / 2
    assert spacing != Fraction(53, 20)  # the float's rational value, not 2.65
    clips = clip_timepoints(116_800 / 16_000, 3)
    assert clips == [(spacing * k, spacing * k + 2) for k in range(3)]
    assert all(isinstance(v, Fraction) for clip in clips for v in clip)
    assert clips == reference_clips(116_800 / 16_000)
    # Truncation: the float sits just below 7.3, so the later clips start one sample early and the
    # last sample of the file is never used.
    assert [(int(s * 16_000), int(e * 16_000)) for s, e in clips] == [(0, 32_000), (42_399, 74_399), (84_799, 116_799)]


@pytest.mark.parametrize("samples", [16_000, 32_000, 48_000, 64_000, 116_800, 32_001, 47_999])
def test_clip_timepoints_match_reference(samples: int) -> None:
    assert clip_timepoints(samples / 16_000, 3) == reference_clips(samples / 16_000)


def test_in_place_mean_subtraction_is_reproduced_and_matters() -> None:
    # 3 s: clips [0, 2), [0.5, 2.5), [1, 3) overlap. Clip 0's mean shift stays in the shared
    # waveform, so clip 1 sees a step where clip 0 ended: broadband energy in those frames.
    wave = make_signal(3.0, 16_000, 1, seed=1).T
    ours = preprocess_audio(torch.from_numpy(wave))
    assert_matches(ours, reference_from_waveform(wave, 16_000))
    copied = reference_from_waveform(wave, 16_000, in_place=False)
    assert np.abs(ours - copied).max() > 0.1
    np.testing.assert_allclose(ours[0], copied[0], atol=TOLERANCE)  # the first clip sees no earlier shift


def test_stereo_mean_over_all_channels_fbank_of_channel_zero() -> None:
    wave = make_signal(3.0, 16_000, 2, seed=2).T  # channel 1 has a -0.05 DC offset, channel 0 +0.05
    wave[1] += 0.5
    ours = preprocess_audio(torch.from_numpy(wave))
    assert_matches(ours, reference_from_waveform(wave, 16_000))
    assert np.abs(ours - reference_from_waveform(wave, 16_000, mean_channels="first")).max() > 0.1
    swapped = preprocess_audio(torch.from_numpy(wave[::-1].copy()))
    assert np.abs(ours - swapped).max() > 0.1


def test_preprocess_leaves_its_input_alone() -> None:
    wave = torch.from_numpy(make_signal(3.0, 16_000, 2).T.copy())
    before = wave.clone()
    preprocess_audio(wave)
    torch.testing.assert_close(wave, before, rtol=0, atol=0)


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "channels", "rate", "subtype"),
    [
        (1.0, 1, 16_000, "PCM_16"),
        (2.0, 1, 16_000, "PCM_16"),
        (7.3, 1, 16_000, "FLOAT"),
        (1.0, 2, 44_100, "PCM_16"),
        (2.0, 2, 44_100, "FLOAT"),
        (7.3, 2, 44_100, "PCM_16"),
        (7.3, 1, 44_100, "FLOAT"),
        (3.0, 1, 22_050, "PCM_24"),
        (2.5, 2, 48_000, "PCM_16"),
        (4.0, 1, 8_000, "PCM_16"),
    ],
)
def test_wav_matches_reference(seconds: float, channels: int, rate: int, subtype: str) -> None:
    data = soundfile_bytes(make_signal(seconds, rate, channels, seed=channels), rate, "WAV", subtype)
    assert_matches(load_audio(data, FIELD, LIMITS), reference(data))


@pytest.mark.parametrize(
    ("fmt", "subtype", "seconds", "channels", "rate"),
    [
        ("FLAC", "PCM_16", 2.5, 1, 16_000),
        ("FLAC", "PCM_24", 7.3, 2, 44_100),
        ("OGG", "VORBIS", 3.0, 2, 44_100),
        ("OGG", "VORBIS", 1.0, 1, 16_000),
    ],
)
def test_flac_and_ogg_match_reference(fmt: str, subtype: str, seconds: float, channels: int, rate: int) -> None:
    data = soundfile_bytes(make_signal(seconds, rate, channels, seed=3), rate, fmt, subtype)
    assert sniff_audio(data) == fmt
    assert_matches(load_audio(data, FIELD, LIMITS), reference(data))


PYAV_CASES = [
    pytest.param("mp3", "libmp3lame", 44_100, 2, 3.0, "MP3", marks=needs_codecs("libmp3lame", "mp3"), id="mp3"),
    pytest.param("mp3", "libmp3lame", 16_000, 1, 1.5, "MP3", marks=needs_codecs("libmp3lame", "mp3"), id="mp3-16k"),
    pytest.param("ipod", "aac", 44_100, 1, 2.5, "MP4", marks=needs_codecs("aac"), id="m4a"),
    pytest.param("webm", "libopus", 48_000, 2, 3.0, "WebM", marks=needs_codecs("libopus", "opus"), id="webm-opus"),
]


@pytest.mark.parametrize(("container", "codec", "rate", "channels", "seconds", "fmt"), PYAV_CASES)
def test_pyav_formats_match_reference(
    container: str, codec: str, rate: int, channels: int, seconds: float, fmt: str
) -> None:
    data = pyav_bytes(container, codec, make_signal(seconds, rate, channels, seed=4), rate)
    assert sniff_audio(data) == fmt
    decoded, decoded_rate = pyav_decode(data)
    assert decoded_rate == rate and decoded.shape[0] == channels
    assert_matches(load_audio(data, FIELD, LIMITS), reference_from_waveform(decoded, decoded_rate))


VIDEO_CASES = [
    pytest.param("mp4", "libx264", "aac", 44_100, "MP4", marks=needs_codecs("libx264", "aac"), id="mp4-h264-aac"),
    pytest.param("webm", "libvpx", "libopus", 48_000, "WebM", marks=needs_codecs("libvpx", "libopus"), id="webm-vp8"),
]


@pytest.mark.parametrize(("container", "video", "codec", "rate", "fmt"), VIDEO_CASES)
def test_video_file_uses_its_audio_track(container: str, video: str, codec: str, rate: int, fmt: str) -> None:
    data = pyav_bytes(container, codec, make_signal(2.7, rate, 2, seed=5), rate, video, video_seconds=2.7)
    assert sniff_audio(data) == fmt
    decoded, decoded_rate = pyav_decode(data)
    assert_matches(load_audio(data, FIELD, LIMITS), reference_from_waveform(decoded, decoded_rate))


@pytest.mark.parametrize(("container", "video", "codec", "rate", "fmt"), VIDEO_CASES)
def test_video_without_audio_track(container: str, video: str, codec: str, rate: int, fmt: str) -> None:
    data = pyav_bytes(container, None, None, rate, video, video_seconds=1.0)
    assert sniff_audio(data) == fmt
    with pytest.raises(InvalidMedia, match=rf"^audio\[0\]: the {fmt} file has no audio track"):
        load_audio(data, FIELD, LIMITS)


@pytest.mark.parametrize(
    ("head", "fmt"),
    [
        (b"RIFF\x00\x00\x00\x00WAVE", "WAV"),
        (b"fLaC", "FLAC"),
        (b"OggS", "OGG"),
        (b"ID3\x04", "MP3"),
        (b"\xff\xfb\x90\x00", "MP3"),  # MPEG-1 layer III frame sync
        (b"\xff\xf3\x90\x00", "MP3"),  # MPEG-2 layer III
        (b"\xff\xf1\x50\x80", None),  # ADTS AAC: layer bits 00
        (b"\x00\x00\x00\x20ftypisom", "MP4"),
        (b"\x1a\x45\xdf\xa3", "WebM"),
        (b"RIFF\x00\x00\x00\x00AVI ", None),
    ],
)
def test_sniff(head: bytes, fmt: str | None) -> None:
    assert sniff_audio(head + bytes(16)) == fmt


@needs_codecs("libmp3lame", "mp3")
def test_mp3_without_id3_tag() -> None:
    data = pyav_bytes("mp3", "libmp3lame", make_signal(2.2, 44_100, 1, seed=8), 44_100)
    assert data.startswith(b"ID3")
    size = (data[6] << 21) | (data[7] << 14) | (data[8] << 7) | data[9]  # syncsafe: 7 bits a byte
    bare = data[10 + size :]
    assert bare[0] == 0xFF and bare[1] & 0xE0 == 0xE0
    decoded, rate = pyav_decode(bare)
    assert_matches(load_audio(bare, FIELD, LIMITS), reference_from_waveform(decoded, rate))


def test_shortest_accepted_audio() -> None:
    data = soundfile_bytes(make_signal(400 / 16_000, 16_000, 1), 16_000, "WAV", "FLOAT")  # one fbank frame
    assert_matches(load_audio(data, FIELD, LIMITS), reference(data))


def test_duration_at_the_limit_is_accepted() -> None:
    data = soundfile_bytes(make_signal(1.0, 16_000, 1), 16_000, "WAV", "PCM_16")
    assert load_audio(data, FIELD, MediaLimits(max_audio_seconds=1.0)).shape == (3, 1, 128, 204)


def test_truncated_wav_decodes_what_is_there() -> None:
    # Like torchaudio.load (sox/ffmpeg), libsndfile reads the samples present when the data chunk is cut.
    data = soundfile_bytes(make_signal(2.0, 16_000, 1), 16_000, "WAV", "PCM_16")[:40_000]
    assert_matches(load_audio(data, FIELD, LIMITS), reference(data))


# --- errors --------------------------------------------------------------------------------------


def wav(seconds: float = 2.0, rate: int = 16_000, channels: int = 1, subtype: str = "PCM_16") -> bytes:
    return soundfile_bytes(make_signal(seconds, rate, channels), rate, "WAV", subtype)


def flac() -> bytes:
    return soundfile_bytes(make_signal(2.0, 16_000, 1), 16_000, "FLAC")


def mp3() -> bytes:
    return pyav_bytes("mp3", "libmp3lame", make_signal(2.0, 44_100, 1), 44_100)


def nan_wav() -> bytes:
    samples = make_signal(1.0, 16_000, 1)
    samples[100] = np.nan
    return soundfile_bytes(samples, 16_000, "WAV", "FLOAT")


def assert_error(error: type[MediaError], data: bytes, match: str, limits: MediaLimits = LIMITS) -> None:
    with pytest.raises(error) as info:
        load_audio(data, FIELD, limits)
    assert str(info.value).startswith(f"{FIELD}: ")
    assert info.value.field == FIELD
    assert match in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        pytest.param(lambda: b"", "empty", id="empty"),
        pytest.param(lambda: wav()[:30], "WAV audio is truncated or corrupt", id="wav-header-cut"),
        pytest.param(lambda: b"RIFF\x24\x00\x00\x00WAVE" + bytes(range(256)) * 4, "WAV audio is", id="wav-garbage"),
        pytest.param(lambda: flac()[: len(flac()) // 2], "FLAC audio is truncated or corrupt", id="flac-half"),
        pytest.param(lambda: flac()[:60], "FLAC audio is truncated or corrupt", id="flac-head"),
        pytest.param(lambda: b"OggS" + b"\x00" * 200, "OGG audio is truncated or corrupt", id="ogg-garbage"),
        pytest.param(lambda: wav(0.0), "no audio samples", id="wav-zero-samples"),
        pytest.param(lambda: wav(399 / 16_000), "too short", id="399-samples"),
        pytest.param(lambda: wav(1000 / 44_100, rate=44_100), "too short", id="363-samples-after-resampling"),
        pytest.param(nan_wav, "NaN or infinite", id="nan"),
        pytest.param(lambda: wav(0.1, rate=44_101), "unsupported sample rate 44101 Hz", id="coprime-rate"),
    ],
)
def test_invalid_media(make: Callable[[], bytes], match: str) -> None:
    assert_error(InvalidMedia, make(), match)


@needs_codecs("libmp3lame", "mp3")
@pytest.mark.parametrize("cut", [60, 200])
def test_truncated_mp3(cut: int) -> None:
    assert_error(InvalidMedia, mp3()[:cut], "MP3 file is truncated or corrupt")


@needs_codecs("aac")
def test_truncated_m4a() -> None:
    data = pyav_bytes("ipod", "aac", make_signal(2.0, 44_100, 1), 44_100)
    assert_error(InvalidMedia, data[: len(data) // 2], "MP4 file is truncated or corrupt")


@pytest.mark.parametrize(
    "data",
    [b"\x00\x01not audio at all", np.random.default_rng(0).bytes(4096), b"GIF89a" + bytes(100), b"\xff\xf1\x50\x80"],
    ids=["text", "random", "gif", "adts-aac"],
)
def test_unsupported_type(data: bytes) -> None:
    assert sniff_audio(data) is None
    assert_error(UnsupportedMediaType, data, "WAV, FLAC, OGG, MP3, M4A/MP4/MOV, WebM/MKV")


TINY = MediaLimits(max_audio_seconds=1.0)
MP3 = needs_codecs("libmp3lame", "mp3")
AAC = needs_codecs("aac")
OPUS = needs_codecs("libopus", "opus")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: wav(2.0), id="wav"),
        pytest.param(flac, id="flac"),
        pytest.param(lambda: soundfile_bytes(make_signal(2.0, 44_100, 2), 44_100, "OGG", "VORBIS"), id="ogg"),
        pytest.param(mp3, marks=MP3, id="mp3"),
        pytest.param(lambda: pyav_bytes("webm", "libopus", make_signal(2.0, 48_000, 1), 48_000), marks=OPUS, id="webm"),
    ],
)
def test_too_long(make: Callable[[], bytes]) -> None:
    assert_error(MediaTooLarge, make(), "over the limit of 1 s", TINY)


@needs_codecs("libmp3lame", "mp3")
def test_too_long_is_caught_while_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    # A container may not declare its length (or lie): the decoded samples are counted too.
    monkeypatch.setattr(audio_module, "_check_duration", lambda *args: None)
    assert_error(MediaTooLarge, mp3(), "stopped decoding", TINY)


def test_too_many_samples_for_the_duration_limit() -> None:
    # 8 channels at 192 kHz: 0.01 s is within the duration limit but over the decoded-sample budget.
    data = soundfile_bytes(np.zeros((1920, 8), np.float32), 192_000, "WAV", "FLOAT")
    assert_error(MediaTooLarge, data, "too much", MediaLimits(max_audio_seconds=0.01))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: soundfile_bytes(make_signal(2.5, 44_100, 2), 44_100, "WAV", "PCM_16"), id="wav"),
        pytest.param(lambda: soundfile_bytes(make_signal(2.5, 44_100, 2), 44_100, "FLAC"), id="flac"),
        pytest.param(lambda: soundfile_bytes(make_signal(2.5, 44_100, 2), 44_100, "OGG", "VORBIS"), id="ogg"),
        pytest.param(mp3, marks=MP3, id="mp3"),
        pytest.param(lambda: pyav_bytes("ipod", "aac", make_signal(2.5, 44_100, 2), 44_100), marks=AAC, id="m4a"),
        pytest.param(lambda: pyav_bytes("webm", "libopus", make_signal(2.5, 48_000, 2), 48_000), marks=OPUS, id="webm"),
    ],
)
def test_corrupted_bytes_raise_only_media_errors(make: Callable[[], bytes]) -> None:
    data = make()
    rng = np.random.default_rng(7)
    for _ in range(25):
        mutated = bytearray(data)
        for pos in rng.integers(4, len(data), size=int(rng.integers(1, 40))):
            mutated[pos] = int(rng.integers(0, 256))
        cut = int(rng.integers(5, len(data) + 1))
        try:
            out = load_audio(bytes(mutated[:cut]), FIELD, LIMITS)
        except MediaError as exc:
            assert str(exc).startswith(f"{FIELD}: ")
        else:
            assert out.shape == (3, 1, 128, 204) and np.isfinite(out).all()
