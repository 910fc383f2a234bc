"""Held-out pictures for the demo, drawn by code of their own (not training/synthetic.py's).

The demo's recipe trains on training/synthetic.py's pictures. This module draws the same kind of
scene (1-3 copies of one shape in one colour) differently, so that a test measures what the demo
learned about colours, shapes and counts rather than about one generator's quirks:

- its own shades of each colour (none is one of synthetic.COLOURS' values),
- backgrounds of other colours (muted tints: sand, slate, mint, mauve, ...; plain, a two-tone
  gradient, or a soft vignette), never as saturated as a shape,
- PIL's own primitives (rectangle, regular_polygon, ellipse; the cross is two rectangles), drawn
  at 4x and downsampled (anti-aliased edges), at 256 x 256 (the service resizes to 224),
- sizes and places of their own (anywhere in the frame, copies apart by at least half a radius),
- JPEG at quality 60-90 instead of PNG.

Every picture is a pure function of (seed, index).
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFilter

SIDE = 256
SUPER = 4  # drawn at 4x, then downsampled: anti-aliased edges
# Shades per colour word: each differs from training/synthetic.py's value for that word.
PALETTE: dict[str, tuple[tuple[int, int, int], ...]] = {
    "red": ((200, 25, 35), (232, 48, 40), (185, 15, 25)),
    "green": ((30, 150, 60), (62, 182, 72), (24, 128, 44)),
    "blue": ((30, 92, 200), (52, 62, 232), (24, 110, 212)),
    "yellow": ((246, 214, 44), (234, 226, 22), (250, 228, 64)),
    "orange": ((238, 128, 30), (250, 152, 40), (228, 118, 12)),
    "purple": ((128, 40, 178), (152, 62, 202), (118, 50, 166)),
    "pink": ((244, 108, 180), (238, 132, 202), (250, 104, 168)),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
# Muted tints of many hues, light and dark: a background is never the shape's saturation.
BACKGROUNDS = (
    (228, 216, 192),  # sand
    (200, 210, 226),  # pale slate blue
    (206, 226, 210),  # mint grey
    (192, 176, 192),  # mauve grey
    (236, 232, 222),  # off-white
    (46, 56, 72),  # dark slate
    (62, 60, 42),  # dark olive
    (70, 48, 52),  # dark plum
    (150, 150, 146),  # mid grey
    (226, 204, 204),  # dusty rose
    (30, 32, 34),  # near black
)


@dataclass(frozen=True)
class HeldOutScene:
    colour: str
    shape: str
    count: int
    jpeg: bytes


def _star(cx: float, cy: float, r: float, inner: float, angle: float) -> list[tuple[float, float]]:
    points = []
    for j in range(10):
        rad = r if j % 2 == 0 else r * inner
        a = angle - math.pi / 2 + j * math.pi / 5
        points.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return points


def _shape(canvas: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill: tuple) -> None:
    if shape == "circle":
        canvas.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        canvas.regular_polygon((cx, cy, r), 4, rotation=45 + math.degrees(angle), fill=fill)
    elif shape == "triangle":
        canvas.regular_polygon((cx, cy, r), 3, rotation=math.degrees(angle), fill=fill)
    elif shape == "star":
        canvas.polygon(_star(cx, cy, r, 0.45, angle), fill=fill)
    elif shape == "cross":  # a plus sign: two bars, upright (rotating two bars would need their corners)
        half = 0.34 * r
        canvas.rectangle((cx - r, cy - half, cx + r, cy + half), fill=fill)
        canvas.rectangle((cx - half, cy - r, cx + half, cy + r), fill=fill)
    else:
        raise ValueError(shape)


def _background(rng: random.Random) -> Image.Image:
    first, b = rng.sample(BACKGROUNDS, 2)
    r, g, bl = (max(0, min(255, v + rng.randint(-10, 10))) for v in first)
    a = (r, g, bl)
    kind = rng.choice(("plain", "gradient", "vignette"))
    if kind == "plain":
        return Image.new("RGB", (SIDE, SIDE), a)
    if kind == "gradient":  # a linear mix between two tints, along x or y
        mask = Image.linear_gradient("L").resize((SIDE, SIDE))
        if rng.random() < 0.5:
            mask = mask.transpose(Image.Transpose.ROTATE_90)
        return Image.composite(Image.new("RGB", (SIDE, SIDE), a), Image.new("RGB", (SIDE, SIDE), b), mask)
    mask = Image.radial_gradient("L").resize((SIDE, SIDE))  # vignette: a centre tint fading to another
    return Image.composite(Image.new("RGB", (SIDE, SIDE), b), Image.new("RGB", (SIDE, SIDE), a), mask)


def _layout(count: int, rng: random.Random) -> list[tuple[float, float, float]]:
    low, high = {1: (30, 58), 2: (22, 42), 3: (18, 34)}[count]
    r = rng.uniform(low, high)
    while True:  # rejection sampling: copies inside the frame, at least r/2 apart at their edges
        places = [(rng.uniform(r + 6, SIDE - r - 6), rng.uniform(r + 6, SIDE - r - 6)) for _ in range(count)]
        if all(math.dist(p, q) > 2.5 * r for i, p in enumerate(places) for q in places[:i]):
            return [(x, y, r * rng.uniform(0.92, 1.0)) for x, y in places]


def scene(seed: int, index: int) -> HeldOutScene:
    rng = random.Random(f"held-out-drawings/{seed}/{index}")
    colour, shape, count = rng.choice(tuple(PALETTE)), rng.choice(SHAPES), rng.choice((1, 2, 3))
    fill = rng.choice(PALETTE[colour])
    image = _background(rng)
    big = image.resize((SIDE * SUPER, SIDE * SUPER))
    canvas = ImageDraw.Draw(big)
    angle = rng.uniform(-0.35, 0.35)
    for x, y, r in _layout(count, rng):
        _shape(canvas, shape, x * SUPER, y * SUPER, r * SUPER, angle, fill)
    image = big.resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(60, 90))
    return HeldOutScene(colour, shape, count, buffer.getvalue())


def scenes(n: int, seed: int) -> Iterator[HeldOutScene]:
    for i in range(n):
        yield scene(seed, i)
