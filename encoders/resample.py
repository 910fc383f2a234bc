"""Band-limited resampling, a port of `torchaudio.functional.resample` at its defaults.

ImageBind resampled every clip not at 16 kHz with torchaudio's windowed-sinc (Hann) interpolation:
lowpass_filter_width=6, rolloff=0.99, computed in the waveform's dtype (float32). torchaudio cannot
be installed beside the CPU torch, so the kernel and the strided conv1d are rebuilt here with the
same torch ops in the same order, which keeps the original's float32 rounding.
"""

from __future__ import annotations

import math

import torch

LOWPASS_FILTER_WIDTH = 6
ROLLOFF = 0.99


def reduced_rates(orig_freq: int, new_freq: int) -> tuple[int, int]:
    gcd = math.gcd(orig_freq, new_freq)
    return orig_freq // gcd, new_freq // gcd


def kernel_width(orig: int, new: int) -> int:
    """Taps on each side of the kernel, for rates already divided by their gcd."""
    base = min(orig, new) * ROLLOFF
    return math.ceil(LOWPASS_FILTER_WIDTH * orig / base)


def kernel_elements(orig_freq: int, new_freq: int) -> int:
    """Size of the (new, 1, 2 * width + orig) kernel; callers bound it, as coprime rates make it huge."""
    orig, new = reduced_rates(orig_freq, new_freq)
    return new * (2 * kernel_width(orig, new) + orig)


def sinc_kernel(orig: int, new: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, int]:
    """torchaudio's `_get_sinc_resample_kernel` (sinc_interp_hann) in `dtype`, for reduced rates."""
    base_freq = min(orig, new) * ROLLOFF
    width = kernel_width(orig, new)
    idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    # One row per output phase: t is the distance from each input tap, in units of the cut-off.
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx
    t *= base_freq
    t = t.clamp_(-LOWPASS_FILTER_WIDTH, LOWPASS_FILTER_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_FILTER_WIDTH / 2) ** 2
    t *= math.pi
    scale = base_freq / orig
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    return kernels, width


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int) -> torch.Tensor:
    """float32 (..., N) at orig_freq -> (..., ceil(new * N / orig)) at new_freq.

    Equal rates return the input unchanged, as torchaudio (and ImageBind, which skipped the call) did.
    """
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
    if not waveform.is_floating_point():
        raise TypeError(f"expected a floating point waveform, got {waveform.dtype}")
    if orig_freq == new_freq:
        return waveform
    orig, new = reduced_rates(orig_freq, new_freq)
    kernels, width = sinc_kernel(orig, new, waveform.dtype)

    shape = waveform.size()
    flat = waveform.reshape(-1, shape[-1])
    num_wavs, length = flat.shape
    # Zero padding: the kernel for output frame f starts at input f * orig - width.
    padded = torch.nn.functional.pad(flat, (width, width + orig))
    out = torch.nn.functional.conv1d(padded[:, None], kernels, stride=orig)  # (num_wavs, new, frames)
    out = out.transpose(1, 2).reshape(num_wavs, -1)  # interleave the phases
    target_length = int(math.ceil(new * length / orig))
    return out[..., :target_length].reshape(shape[:-1] + (target_length,))
