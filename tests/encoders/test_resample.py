"""Our port of torchaudio.functional.resample against a direct float64 windowed-sinc sum, and its signal behaviour."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from encoders.resample import kernel_elements, resample

pytestmark = pytest.mark.unit

RATES = [8000, 22050, 44100, 48000]


def reference_resample(x: np.ndarray, orig_freq: int, new_freq: int) -> np.ndarray:
    """Direct float64 evaluation of the sum torchaudio's kernel approximates (Hann sinc, width 6, rolloff 0.99).

    In rates divided by their gcd: y[i] = sum_j x[j] h(t_ij), t_ij = (j / orig - i / new) * base,
    base = 0.99 * min(orig, new), h(t) = sinc(pi t) * cos(pi t / 12)^2 * base / orig for |t| < 6,
    0 beyond; x is zero outside [0, N). Output length ceil(new * N / orig). `x` is (..., N).
    """
    if orig_freq == new_freq:
        return np.asarray(x, dtype=np.float64)
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    base = min(orig, new) * 0.99
    x = np.asarray(x, dtype=np.float64)
    length = x.shape[-1]
    n_out = math.ceil(new * length / orig)
    reach = math.ceil(6 * orig / base) + 1  # input samples on each side with |t| < 6
    out = np.zeros(x.shape[:-1] + (n_out,))
    for lo in range(0, n_out, 4096):
        i = np.arange(lo, min(lo + 4096, n_out))[:, None]
        centre = (i * orig) // new
        j = centre + np.arange(-reach, reach + 2)[None, :]
        t = (j / orig - i / new) * base
        h = np.where(t == 0, 1.0, np.sin(np.pi * t) / np.where(t == 0, 1.0, np.pi * t))
        h = h * np.cos(np.pi * t / 12) ** 2 * base / orig
        h[(np.abs(t) >= 6) | (j < 0) | (j >= length)] = 0.0
        out[..., lo : lo + i.shape[0]] = np.einsum("...ik,ik->...i", x[..., np.clip(j, 0, length - 1)], h)
    return out


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("length", [1, 7, 441, 1000, 12_345])
def test_output_length(rate: int, length: int) -> None:
    x = torch.zeros(2, length)
    gcd = math.gcd(rate, 16_000)
    assert resample(x, rate, 16_000).shape == (2, math.ceil((16_000 // gcd) * length / (rate // gcd)))


def test_same_rate_is_identity() -> None:
    x = torch.randn(2, 1000)
    assert resample(x, 16_000, 16_000) is x


@pytest.mark.parametrize("rate", RATES)
def test_matches_direct_sum(rate: int) -> None:
    rng = np.random.default_rng(rate)
    n = int(rate * 0.4) + 3  # not a whole number of kernel periods
    x = np.stack([0.3 * rng.standard_normal(n), tone(1234.5, rate, n / rate)[:n]]).astype(np.float32)
    ours = resample(torch.from_numpy(x), rate, 16_000)
    assert ours.dtype == torch.float32
    ref = reference_resample(x, rate, 16_000)
    assert ours.shape == ref.shape
    # The kernel is built in float32 like the original (its t grid rounds at ~1e-7 x base):
    # measured up to 1.5e-5 (22050 Hz) against float64 on unit-scale input.
    np.testing.assert_allclose(ours.numpy(), ref, atol=5e-5, rtol=0)


def test_batch_dimensions_are_kept() -> None:
    x = torch.randn(2, 3, 4410)
    out = resample(x, 44_100, 16_000)
    assert out.shape == (2, 3, 1600)
    torch.testing.assert_close(out[1, 2], resample(x[1, 2], 44_100, 16_000))


@pytest.mark.parametrize(
    ("rate", "freq"), [(r, f) for r in RATES for f in (440.0, 1000.0, 3000.0, 6000.0) if f < 0.99 * min(r, 16_000) / 2]
)
def test_tone_keeps_frequency_and_amplitude(rate: int, freq: float) -> None:
    out = resample(torch.from_numpy(tone(freq, rate, 1.0)), rate, 16_000).numpy()
    middle = out[2000:-2000]  # away from the zero-padded edges
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(middle.size)))
    peak_hz = np.argmax(spectrum) * 16_000 / middle.size
    assert abs(peak_hz - freq) <= 16_000 / middle.size
    # The 6-zero-crossing Hann-windowed sinc rolls off well below its cut-off (0.99 x the lower
    # Nyquist): within 1 % up to half the cut-off, and -1.5 % at 3/4 of it (the original's filter).
    cutoff = 0.99 * min(rate, 16_000) / 2
    tolerance = 0.01 if freq <= cutoff / 2 else 0.02
    gain = np.sqrt(np.mean(middle**2)) / (0.5 / np.sqrt(2))
    assert abs(gain - 1) < tolerance


@pytest.mark.parametrize("freq", [10_000.0, 12_000.0, 20_000.0])
def test_anti_aliasing(freq: float) -> None:
    x = tone(freq, 44_100, 1.0)
    out = resample(torch.from_numpy(x), 44_100, 16_000).numpy()
    middle = out[2000:-2000]
    # Above the new Nyquist: without the low-pass it would alias at full amplitude (RMS 0.35).
    assert np.sqrt(np.mean(middle**2)) < 0.01 * np.sqrt(np.mean(x**2))


def test_upsampling_interpolates() -> None:
    out = resample(torch.from_numpy(tone(500.0, 8000, 1.0)), 8000, 16_000).numpy()
    expected = tone(500.0, 16_000, 1.0)
    np.testing.assert_allclose(out[200:-200], expected[200:-200], atol=2e-3)


def test_coprime_rates_have_a_huge_kernel() -> None:
    # Why audio.py bounds it: 44101 Hz shares no factor with 16 kHz.
    assert kernel_elements(44_100, 16_000) == 160 * (2 * 17 + 441)
    assert kernel_elements(44_101, 16_000) > 700_000_000
