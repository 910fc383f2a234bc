"""Our Kaldi fbank against kaldi-native-fbank (64/80/100 bins) and a float64 reference written here (128 bins).

Tolerance: 5e-4 (log energy) wherever a mel energy is within e^-12 of its frame's loudest bin, 2e-3
everywhere. Below that level an energy is at the float32 rounding floor of the FFT (e.g. the
lowest mel bin of white noise after DC removal and pre-emphasis, ~1e-7): two float32 FFTs (ours is
torch's, as the original's was; knf has its own) then differ by up to ~1.5e-3 in the log, and
each differs from float64 about as much as from the other.
"""

from __future__ import annotations

from functools import cache

import kaldi_native_fbank as knf
import numpy as np
import pytest
import torch

from encoders.fbank import fbank, mel_banks, num_frames

pytestmark = pytest.mark.unit

EPS = float(np.finfo(np.float32).eps)
LEVEL_FLOOR = -12.0  # log of the relative level below which only the loose bound applies
STRICT, LOOSE = 5e-4, 2e-3
LENGTHS = [400, 16_000, 32_000, 12_345, 559]


def knf_fbank(samples: np.ndarray, num_bins: int) -> np.ndarray:
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0
    opts.frame_opts.samp_freq = 16_000
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.frame_length_ms = 25
    opts.frame_opts.frame_shift_ms = 10
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = num_bins
    opts.mel_opts.low_freq = 20
    opts.mel_opts.high_freq = 0
    opts.use_energy = False
    opts.htk_compat = True
    computer = knf.OnlineFbank(opts)
    computer.accept_waveform(16_000, samples.tolist())
    computer.input_finished()
    return np.array([computer.get_frame(i) for i in range(computer.num_frames_ready)], dtype=np.float32)


def mel(freq: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


@cache
def reference_mel_weights(num_bins: int) -> np.ndarray:
    """Triangles on the mel scale from 20 Hz to 8 kHz below Nyquist (float64; cached, read-only)."""
    low, high = mel(20.0), mel(8000.0)
    delta = (high - low) / (num_bins + 1)
    weights = np.zeros((num_bins, 257))
    for b in range(num_bins):
        left, center, right = low + b * delta, low + (b + 1) * delta, low + (b + 2) * delta
        for j in range(256):
            m = mel(j * 16_000 / 512)
            weights[b, j] = max(0.0, min((m - left) / (center - left), (right - m) / (right - center)))
    weights.flags.writeable = False
    return weights


def reference_fbank(samples: np.ndarray, num_bins: int) -> np.ndarray:
    """Kaldi's fbank as ImageBind configured it, frame by frame in float64 (frames, num_bins)."""
    x = np.asarray(samples, dtype=np.float64)
    frames = 1 + (len(x) - 400) // 160
    window = np.array([0.5 - 0.5 * np.cos(2 * np.pi * n / 399) for n in range(400)])
    weights = reference_mel_weights(num_bins)
    out = np.empty((frames, num_bins))
    for i in range(frames):
        frame = x[i * 160 : i * 160 + 400].copy()
        frame -= frame.mean()
        frame = frame - 0.97 * np.concatenate([frame[:1], frame[:-1]])
        padded = np.zeros(512)
        padded[:400] = frame * window
        power = np.abs(np.fft.rfft(padded)) ** 2
        out[i] = np.log(np.maximum(weights @ power, EPS))
    return out


def signal(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16_000
    if kind == "speech":  # a gliding 100-140 Hz voice with 1/k harmonics, syllable-rate envelope, breath noise
        phase = 2 * np.pi * np.cumsum(120 + 20 * np.sin(2 * np.pi * 0.5 * t)) / 16_000
        harmonics = sum(np.sin(k * phase) / k for k in range(1, 60))
        x = 0.3 * harmonics * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2 + 1e-3 * rng.standard_normal(n)
    elif kind == "noise":
        x = 0.1 * rng.standard_normal(n)
    elif kind == "silence":
        x = np.zeros(n)
    elif kind == "clipped":
        x = np.clip(1.5 * np.sin(2 * np.pi * 330 * t) + 0.3 * rng.standard_normal(n), -1.0, 1.0)
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def assert_close_logmel(ours: np.ndarray, expected: np.ndarray) -> None:
    assert ours.shape == expected.shape
    diff = np.abs(ours - expected)
    level = expected - expected.max(axis=1, keepdims=True)
    above_floor = level > LEVEL_FLOOR
    assert diff[above_floor].max(initial=0.0) <= STRICT, diff[above_floor].max()
    assert diff.max() <= LOOSE, diff.max()


@pytest.mark.parametrize("num_bins", [64, 80, 100])
@pytest.mark.parametrize("kind", ["speech", "noise", "silence", "clipped"])
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_kaldi_native_fbank(num_bins: int, kind: str, length: int) -> None:
    x = signal(kind, length, seed=length)
    ours = fbank(torch.from_numpy(x), num_bins).numpy()
    expected = knf_fbank(x, num_bins)
    assert ours.shape == (num_frames(length), num_bins)
    if kind == "silence":
        np.testing.assert_array_equal(ours, np.full_like(ours, np.log(np.float32(EPS))))
        np.testing.assert_array_equal(expected, ours)
    else:
        assert_close_logmel(ours, expected)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("kind", ["speech", "noise", "clipped"])
def test_matches_kaldi_native_fbank_over_seeds(seed: int, kind: str) -> None:
    x = signal(kind, 32_000, seed=seed)
    for num_bins in (64, 80, 100):
        assert_close_logmel(fbank(torch.from_numpy(x), num_bins).numpy(), knf_fbank(x, num_bins))


def test_knf_refuses_128_bins() -> None:
    # Why 128 bins (ImageBind's) is checked against the reference below instead.
    with pytest.raises(Exception, match="num_mel_bins"):
        knf_fbank(np.zeros(1000, dtype=np.float32), 128)


def test_mel_weights_128() -> None:
    ours = mel_banks(128).numpy()
    expected = reference_mel_weights(128)
    assert ours.shape == (128, 257)
    np.testing.assert_allclose(ours, expected, atol=2e-5, rtol=0)  # float32 mel arithmetic
    np.testing.assert_array_equal(ours > 0, expected > 0)
    assert not ours[:, 256].any()
    # 128 triangles over 256 FFT bins: mel bin 3 catches no FFT bin (knf refuses this; torchaudio does not).
    assert list(np.flatnonzero(ours.sum(axis=1) == 0)) == [3]


@pytest.mark.parametrize("kind", ["speech", "noise", "silence", "clipped"])
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_reference_at_128_bins(kind: str, length: int) -> None:
    x = signal(kind, length, seed=length + 1)
    ours = fbank(torch.from_numpy(x), 128).numpy()
    expected = reference_fbank(x, 128)
    assert_close_logmel(ours, expected)
    # The empty mel bin is log(eps) in both.
    np.testing.assert_array_equal(ours[:, 3], np.float32(np.log(EPS)))


def test_frame_count() -> None:
    assert num_frames(32_000) == 198  # a 2 s clip
    assert num_frames(400) == 1
    assert num_frames(559) == 1
    assert num_frames(560) == 2
    assert num_frames(399) == 0
    assert fbank(torch.zeros(32_000), 128).shape == (198, 128)


def test_too_short_raises() -> None:
    with pytest.raises(ValueError, match="at least 400 samples"):
        fbank(torch.zeros(399), 128)


def test_uses_channel_zero_only() -> None:
    left = signal("speech", 16_000)
    right = signal("noise", 16_000)
    stereo = torch.from_numpy(np.stack([left, right]))
    torch.testing.assert_close(fbank(stereo, 128), fbank(torch.from_numpy(left), 128), rtol=0, atol=0)


def test_does_not_modify_input() -> None:
    x = torch.from_numpy(signal("clipped", 16_000))
    before = x.clone()
    fbank(x, 128)
    torch.testing.assert_close(x, before, rtol=0, atol=0)
