"""pytorchvideo's ConstantClipsPerVideoSampler, as ImageBind's audio (3 clips) and video (5 clips) used
it, and as Video-LLaMA's audio (8 clips) did with an older pytorchvideo.

ImageBind pins a pytorchvideo commit after the fix of 2022-04-28 ("Bug fix in Constant clip
sampler"): clips spread from 0 to the end, (duration - 2) / (clips - 1) apart. Video-LLaMA pins
pytorchvideo 0.1.5 (January 2022), before it: (duration - 2) / clips apart, so the last stretch of
the file is never heard.
"""

from __future__ import annotations

from fractions import Fraction

CLIP_DURATION = 2  # seconds; an int as in the original, so clip ends stay exact Fractions


def clip_timepoints(duration: float, clips: int, to_the_end: bool = True) -> list[tuple[Fraction, Fraction]]:
    """`clips` windows of 2 s spaced (duration - 2) / (clips - 1) apart (`to_the_end=False`, pytorchvideo
    0.1.5: (duration - 2) / clips), all (0, 2) when duration <= 2.

    `duration - 2` is float arithmetic, then made an exact Fraction, as the original did, so slice
    bounds and frame indices computed from these truncate and round the same way.
    """
    max_start = Fraction(max(duration - CLIP_DURATION, 0))
    spacing = Fraction(max_start, max(clips - 1, 1) if to_the_end else clips)
    return [(spacing * k, spacing * k + CLIP_DURATION) for k in range(clips)]
