"""pytorchvideo's ConstantClipsPerVideoSampler, as audio (3 clips) and video (5 clips) used it."""

from __future__ import annotations

from fractions import Fraction

CLIP_DURATION = 2  # seconds; an int as in the original, so clip ends stay exact Fractions


def clip_timepoints(duration: float, clips: int) -> list[tuple[Fraction, Fraction]]:
    """`clips` windows of 2 s spaced (duration - 2) / (clips - 1) apart, all (0, 2) when duration <= 2.

    `duration - 2` is float arithmetic, then made an exact Fraction, as the original did, so slice
    bounds and frame indices computed from these truncate and round the same way.
    """
    max_start = Fraction(max(duration - CLIP_DURATION, 0))
    spacing = Fraction(max_start, max(clips - 1, 1))
    return [(spacing * k, spacing * k + CLIP_DURATION) for k in range(clips)]
