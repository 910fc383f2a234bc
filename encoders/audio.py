"""Audio decoding and preprocessing, exact to ImageBind's `load_and_transform_audio_data`.

The original: torchaudio.load -> resample to 16 kHz -> three 2 s clips placed by pytorchvideo's
ConstantClipsPerVideoSampler -> per clip, subtract the mean IN PLACE on a view of the shared
waveform (so overlapping clips see earlier shifts), Kaldi fbank (128 mel bins, channel 0), pad or
cut to 204 frames, normalise with the AudioSet mean/std -> (3, 1, 128, 204). The same steps are
written here with our own fbank and resampler (torchaudio cannot be installed beside the CPU torch).
WAV/FLAC/OGG decode with soundfile; MP3, MP4/M4A/MOV and WebM/MKV (including a video's audio track)
with PyAV, then our resampler.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from fractions import Fraction

import av
import numpy as np
import soundfile as sf
import torch

from encoders.clips import clip_timepoints
from encoders.errors import InvalidMedia, MediaError, MediaTooLarge, UnsupportedMediaType
from encoders.fbank import WINDOW_SIZE, fbank
from encoders.limits import MediaLimits
from encoders.resample import kernel_elements, resample

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
TARGET_LENGTH = 204
CLIPS_PER_VIDEO = 3
MEAN = -4.268  # AudioSet statistics ImageBind normalised with
STD = 9.138
ACCEPTED = "WAV, FLAC, OGG, MP3, M4A/MP4/MOV, WebM/MKV"
# Decoded samples summed over channels, per second of the duration limit: 96 kHz stereo (or 48 kHz
# with 4 channels) fits a file of the longest allowed duration. The duration limit alone would let
# a many-channel or very high-rate file decode to gigabytes.
SAMPLE_BUDGET_PER_SECOND = 192_000
# Coprime rates (e.g. 44101 Hz -> 16 kHz) make the resampling kernel (new, 2 * width + orig)
# enormous; torchaudio would try to allocate it. No real-world rate comes near this bound.
MAX_KERNEL_ELEMENTS = 1 << 22
# Where the clips lie in a file of this many seconds: (start, end) pairs.
ClipSampler = Callable[[float], list[tuple[Fraction, Fraction]]]
# The demuxer each sniffed container type is opened with, so FFmpeg never probes other formats.
PYAV_DEMUXERS = {"MP3": "mp3", "MP4": "mov", "WebM": "matroska"}


def sniff_audio(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data.startswith(b"fLaC"):
        return "FLAC"
    if data.startswith(b"OggS"):
        return "OGG"
    # ID3v2 tag, or an MPEG audio frame sync (11 set bits) with a layer (bits 2-1 of byte 1) that is
    # not the reserved 00, which ADTS AAC uses.
    if data.startswith(b"ID3") or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06):
        return "MP3"
    if data[4:8] == b"ftyp":
        return "MP4"
    if data.startswith(b"\x1a\x45\xdf\xa3"):
        return "WebM"
    return None


def _reason(exc: Exception) -> str:
    """The decoder's own words, without the `<_io.BytesIO object at 0x...>` both libraries add."""
    words = getattr(exc, "error_string", None) or getattr(exc, "strerror", None) or str(exc)
    return str(words).strip() or type(exc).__name__


def _check_duration(field: str, seconds: float, limits: MediaLimits) -> None:
    if seconds > limits.max_audio_seconds:
        raise MediaTooLarge(field, f"audio is {seconds:.1f} s long, over the limit of {limits.max_audio_seconds:g} s")


def _check_rate(field: str, fmt: str, rate: int, limits: MediaLimits) -> None:
    if rate <= 0:
        raise InvalidMedia(field, f"the {fmt} audio declares a sample rate of {rate} Hz")
    # Resampling to 16 kHz multiplies the samples by 16000 / rate: a very low rate is a cheap file
    # that becomes a large waveform; a very high one is costly to decode for nothing the model hears.
    if rate < limits.min_audio_sample_rate:
        raise InvalidMedia(
            field, f"the sample rate {rate} Hz is below the minimum of {limits.min_audio_sample_rate} Hz"
        )
    if rate > limits.max_audio_sample_rate:
        raise MediaTooLarge(field, f"the sample rate {rate} Hz is over the limit of {limits.max_audio_sample_rate} Hz")
    if rate != SAMPLE_RATE and kernel_elements(rate, SAMPLE_RATE) > MAX_KERNEL_ELEMENTS:
        raise InvalidMedia(field, f"unsupported sample rate {rate} Hz")


def _check_channels(field: str, channels: int, limits: MediaLimits) -> None:
    if channels > limits.max_audio_channels:
        raise MediaTooLarge(field, f"audio has {channels} channels, over the limit of {limits.max_audio_channels}")


def _sample_budget(limits: MediaLimits) -> int:
    return int(limits.max_audio_seconds * SAMPLE_BUDGET_PER_SECOND)


def _check_resampled(field: str, rows: int, frames: int, rate: int, limits: MediaLimits) -> None:
    """The budget counts what resampling will produce too (the rows kept, at 16 kHz), before it runs."""
    produced = rows * math.ceil(SAMPLE_RATE * frames / rate)
    if produced > _sample_budget(limits):
        raise MediaTooLarge(field, f"audio would resample to {produced} samples, over the budget")


def used_channels(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Only what the model uses, before resampling: channel 0 (the fbank's input) and, for the mean
    each clip subtracts over ALL channels, the sum of the others. Resampling is linear, so resampling
    that sum equals summing the resampled channels (to float rounding): 2 rows resampled, not C.

    (channels, N) -> (rows, N) and how many original channels each row stands for (None: one each,
    the rows are the channels: mono and stereo keep the original's exact arithmetic)."""
    if samples.shape[0] <= 2:
        return samples, None
    rows = np.stack([samples[0], samples[1:].sum(axis=0, dtype=np.float32)])
    return rows, np.array([1.0, samples.shape[0] - 1.0], dtype=np.float32)


def _decode_soundfile(data: bytes, fmt: str, field: str, limits: MediaLimits) -> tuple[np.ndarray, int]:
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            # The header's rate, channels and length, checked before any sample is decoded.
            _check_rate(field, fmt, f.samplerate, limits)
            _check_channels(field, f.channels, limits)
            _check_duration(field, f.frames / f.samplerate, limits)
            if f.frames * f.channels > _sample_budget(limits):
                raise MediaTooLarge(field, f"audio has {f.channels} channels at {f.samplerate} Hz, too much to decode")
            _check_resampled(field, min(f.channels, 2), f.frames, f.samplerate, limits)
            # int PCM comes back as x / 2**(bits-1), like torchaudio.load; (N, C) -> (C, N).
            samples = f.read(dtype="float32", always_2d=True).T
            return np.ascontiguousarray(samples), int(f.samplerate)
    except MediaError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, TypeError, EOFError) as exc:
        raise InvalidMedia(field, f"the {fmt} audio is truncated or corrupt ({_reason(exc)})") from exc


def _decode_pyav(data: bytes, fmt: str, field: str, limits: MediaLimits) -> tuple[np.ndarray, int]:
    budget = _sample_budget(limits)
    try:
        with av.open(io.BytesIO(data), mode="r", format=PYAV_DEMUXERS[fmt], metadata_errors="replace") as container:
            if not container.streams.audio:
                raise InvalidMedia(field, f"the {fmt} file has no audio track")
            stream = container.streams.audio[0]
            # The container's declared length, before decoding (MP3 without a Xing header estimates it).
            if stream.duration is not None and stream.time_base is not None:
                _check_duration(field, float(stream.duration * stream.time_base), limits)
            elif container.duration is not None:
                _check_duration(field, container.duration / av.time_base, limits)
            chunks: list[np.ndarray] = []
            rate = 0
            decoded = 0
            resampler: av.AudioResampler | None = None
            for frame in container.decode(stream):
                if resampler is None:
                    # Float planar at the stream's own layout and rate: no rate conversion in FFmpeg.
                    rate = frame.sample_rate
                    _check_rate(field, fmt, rate, limits)
                    _check_channels(field, frame.layout.nb_channels, limits)
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=rate)
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray()
                    chunks.append(chunk)
                    decoded += chunk.shape[1]
                    # Counted while decoding: the declared duration may be missing or wrong.
                    if decoded / rate > limits.max_audio_seconds:
                        raise MediaTooLarge(
                            field,
                            f"audio is longer than the limit of {limits.max_audio_seconds:g} s (stopped decoding)",
                        )
                    if decoded * chunk.shape[0] > budget:
                        raise MediaTooLarge(field, f"audio has {chunk.shape[0]} channels at {rate} Hz, too much")
            if resampler is not None:
                chunks.extend(out.to_ndarray() for out in resampler.resample(None))
    except MediaError:
        raise
    except (av.error.FFmpegError, ValueError, TypeError, OSError, EOFError, IndexError) as exc:
        raise InvalidMedia(field, f"the {fmt} file is truncated or corrupt ({_reason(exc)})") from exc
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), max(rate, 1)
    if len({chunk.shape[0] for chunk in chunks}) != 1:
        raise InvalidMedia(field, f"the {fmt} audio changes its channel count mid-stream")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate


def decode_audio(data: bytes, field: str, limits: MediaLimits) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sniff the format from the bytes, decode, keep the channels the model uses, resample to 16 kHz:
    float32 (rows, N) and the channels each row stands for (`used_channels`)."""
    if not data:
        raise InvalidMedia(field, "the file is empty")
    fmt = sniff_audio(data)
    if fmt is None:
        raise UnsupportedMediaType(field, f"not audio in a supported format ({ACCEPTED})")
    if fmt in PYAV_DEMUXERS:
        samples, rate = _decode_pyav(data, fmt, field, limits)
    else:
        samples, rate = _decode_soundfile(data, fmt, field, limits)
    if samples.size == 0:
        raise InvalidMedia(field, f"the {fmt} file has no audio samples")
    if not np.isfinite(samples).all():
        raise InvalidMedia(field, f"the {fmt} audio has NaN or infinite samples")
    rows, weights = used_channels(samples)
    _check_resampled(field, rows.shape[0], rows.shape[1], rate, limits)
    return resample(torch.from_numpy(rows), rate, SAMPLE_RATE), None if weights is None else torch.from_numpy(weights)


def waveform2melspec(clip: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(channels, n) float32 -> (1, 128, 204) log-mel. Subtracts the mean IN PLACE, like the original.

    `weights`: how many original channels each row stands for (`used_channels`); the mean is then
    over those channels, and each row loses it once per channel it stands for."""
    if weights is None:
        clip -= clip.mean()  # over all channels; on a view, so the shared waveform changes too
    else:
        mean = clip.sum() / (weights.sum() * clip.size(1))
        clip -= mean * weights[:, None]
    mel = fbank(clip, NUM_MEL_BINS).T  # channel 0 only; (mel, frames)
    pad = TARGET_LENGTH - mel.size(1)
    mel = torch.nn.functional.pad(mel, (0, pad)) if pad > 0 else mel[:, :TARGET_LENGTH]
    return mel.unsqueeze(0)


def imagebind_clips(duration: float) -> list[tuple[Fraction, Fraction]]:
    return clip_timepoints(duration, CLIPS_PER_VIDEO)


def preprocess_audio(
    waveform: torch.Tensor, weights: torch.Tensor | None = None, clips: ClipSampler = imagebind_clips
) -> np.ndarray:
    """16 kHz float32 (channels, N), N >= 400 -> float32 (clips, 1, 128, 204) at the windows `clips`
    places (ImageBind's 3 by default). The input is not modified. `weights`: see `waveform2melspec`."""
    if waveform.dim() != 2 or waveform.size(1) < WINDOW_SIZE:
        raise ValueError(f"expected (channels, N >= {WINDOW_SIZE}) audio, got {tuple(waveform.shape)}")
    # A private copy keeps the caller's tensor intact; the clips below must still share it.
    waveform = waveform.to(torch.float32, copy=True)
    mels = []
    for start, end in clips(waveform.size(1) / SAMPLE_RATE):
        clip = waveform[:, int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]
        mels.append(waveform2melspec(clip, weights))
    # torchvision's Normalize: float32 mean and std tensors, subtract then divide.
    mean = torch.tensor(MEAN, dtype=torch.float32)
    std = torch.tensor(STD, dtype=torch.float32)
    return torch.stack([(mel - mean) / std for mel in mels]).numpy()


def load_audio(data: bytes, field: str, limits: MediaLimits, clips: ClipSampler = imagebind_clips) -> np.ndarray:
    waveform, weights = decode_audio(data, field, limits)
    if waveform.size(1) < WINDOW_SIZE:
        got = waveform.size(1)
        raise InvalidMedia(field, f"audio is too short: {got} samples at 16 kHz, at least {WINDOW_SIZE} (25 ms) needed")
    return preprocess_audio(waveform, weights, clips)
