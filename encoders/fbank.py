"""Kaldi log-mel filterbank, a float32 port of `torchaudio.compliance.kaldi.fbank`.

ImageBind called it with htk_compat=True, use_energy=False, window_type="hanning", dither=0.0,
frame_length=25 ms, frame_shift=10 ms at 16 kHz, leaving the rest at torchaudio's defaults
(snip_edges, remove_dc_offset, pre-emphasis 0.97, power spectrum, low_freq 20 Hz, high_freq at
Nyquist, FFT size rounded up to a power of two). torchaudio cannot be installed beside the CPU
torch, so the same steps are written here with the same torch ops in the same order, which keeps
the float32 rounding of the original. With use_energy=False, htk_compat changes nothing.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

SAMPLE_RATE = 16_000
WINDOW_SIZE = int(SAMPLE_RATE * 25 * 0.001)  # 400 samples: 25 ms
WINDOW_SHIFT = int(SAMPLE_RATE * 10 * 0.001)  # 160 samples: 10 ms
PADDED_WINDOW_SIZE = 1 << (WINDOW_SIZE - 1).bit_length()  # 512: the FFT size
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
# torch.finfo(torch.float).eps, Kaldi's floor before the log (std::numeric_limits<float>::epsilon()).
EPSILON = torch.tensor(torch.finfo(torch.float32).eps, dtype=torch.float32)


def num_frames(num_samples: int) -> int:
    """Frames with snip_edges=True: only windows that fit entirely in the signal."""
    return 0 if num_samples < WINDOW_SIZE else 1 + (num_samples - WINDOW_SIZE) // WINDOW_SHIFT


def _mel_scalar(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


@lru_cache(maxsize=8)
def mel_banks(num_bins: int) -> torch.Tensor:
    """Triangular mel weights, float32 (num_bins, PADDED_WINDOW_SIZE // 2 + 1).

    `get_mel_banks` with vtln_warp=1: the triangle edges are computed in Python doubles, then
    every tensor step in float32 as torchaudio does. The Nyquist column is a zero pad. Cached and
    shared: callers must not modify it.
    """
    if num_bins <= 3:
        raise ValueError("Must have at least 3 mel bins")
    num_fft_bins = PADDED_WINDOW_SIZE // 2
    high_freq = 0.5 * SAMPLE_RATE
    fft_bin_width = SAMPLE_RATE / PADDED_WINDOW_SIZE
    mel_low = _mel_scalar(LOW_FREQ)
    mel_high = _mel_scalar(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)

    bin_index = torch.arange(num_bins, dtype=torch.float32).unsqueeze(1)
    left = mel_low + bin_index * delta
    center = mel_low + (bin_index + 1.0) * delta
    right = mel_low + (bin_index + 2.0) * delta
    freqs = fft_bin_width * torch.arange(num_fft_bins, dtype=torch.float32)
    mel = (1127.0 * (1.0 + freqs / 700.0).log()).unsqueeze(0)
    up_slope = (mel - left) / (center - left)
    down_slope = (right - mel) / (right - center)
    weights = torch.max(torch.zeros(1, dtype=torch.float32), torch.min(up_slope, down_slope))
    return torch.nn.functional.pad(weights, (0, 1), mode="constant", value=0.0)


@lru_cache(maxsize=1)
def _window() -> torch.Tensor:
    # Kaldi's "hanning" is the symmetric Hann window: 0.5 - 0.5 cos(2 pi n / (N - 1)).
    return torch.hann_window(WINDOW_SIZE, periodic=False, dtype=torch.float32).unsqueeze(0)


def fbank(waveform: torch.Tensor, num_mel_bins: int) -> torch.Tensor:
    """16 kHz float32 audio, (channels, N) or (N,), -> log mel energies (frames, num_mel_bins).

    Like torchaudio with its default channel=-1, only channel 0 is used. Raises ValueError when
    there are fewer than WINDOW_SIZE samples (torchaudio failed an assertion there).
    """
    samples = waveform[0] if waveform.dim() == 2 else waveform
    if samples.dim() != 1 or samples.dtype != torch.float32:
        raise ValueError(f"expected float32 audio of shape (channels, N) or (N,), got {tuple(waveform.shape)}")
    if num_frames(samples.numel()) == 0:
        raise ValueError(f"need at least {WINDOW_SIZE} samples for one frame, got {samples.numel()}")

    frames = samples.unfold(0, WINDOW_SIZE, WINDOW_SHIFT)  # (m, 400), a strided view like _get_strided
    frames = frames - torch.mean(frames, dim=1).unsqueeze(1)  # remove each frame's DC offset
    # Pre-emphasis x[i] - 0.97 x[i-1], with x[-1] := x[0] (replicate padding).
    previous = torch.nn.functional.pad(frames.unsqueeze(0), (1, 0), mode="replicate").squeeze(0)
    frames = frames - PREEMPHASIS * previous[:, :-1]
    frames = frames * _window()
    frames = torch.nn.functional.pad(frames.unsqueeze(0), (0, PADDED_WINDOW_SIZE - WINDOW_SIZE)).squeeze(0)

    spectrum = torch.fft.rfft(frames).abs().pow(2.0)  # power spectrum, (m, 257)
    energies = torch.mm(spectrum, mel_banks(num_mel_bins).T)
    return torch.max(energies, EPSILON).log()
