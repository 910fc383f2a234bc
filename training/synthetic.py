"""A synthetic "coloured shapes" dataset that a tiny demo model can learn to see.

Each scene has 1-3 copies of ONE shape in ONE colour on a muted background (plain, gradient or
light noise, grey or tinted towards any hue). Keeping one colour and one shape per image makes
"the colour" and "the shape" unambiguous, so every answer can name both literally and an
evaluation can check the reply with a word match. Backgrounds are low-saturation on purpose: the
shape is the only saturated colour in the picture, so "what colour" has one right answer.

The pictures vary in what a model should not depend on (issue 16): the fill's shade, the
background's tone and tint, the shapes' size (copies of a group are smaller than a single shape,
as they must fit), place and rotation, the star's and cross's proportions, hard edges or
anti-aliased ones (drawn 2-4x larger, downsampled by one of four filters), a slight blur, JPEG
compression (70% of the pictures pass through JPEG, quality 40-95, before the PNG), and the size a
picture comes in (half are resized to 232-320 px, which the service resizes back to 224: measured, a
readout of shape on the tests' separately written pictures rose from ~88% to ~93% with it).

Outputs, in PandaGPT's original instruction format (what training/data.py reads):
    OUT/images/00000.png ...
    OUT/data.json     [{"image_name": "00000.png", "conversation": [{"from": "human", "value": ...},
                                                                  {"from": "gpt", "value": ...}, ...]}]
    OUT/labels.json   {"00000.png": {"colour", "shape", "count", "position"}}: ground truth for probes
                      and evaluations (not part of the original format, so kept in its own file)

Everything is a pure function of (seed, index): splits are made by seed (e.g. train seed 0,
held-out seed 1), and each item has its own RNG so item i never depends on how many came before.

Usage: python -m training.synthetic OUT_DIR [--n N] [--seed S]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 224  # ImageBind's input size: the preprocessing then only normalises (no crop cuts a shape off)
# Saturated, well-separated hues; each word is in the demo tokenizer's vocabulary.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 50),
    "blue": (40, 70, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 50, 190),
    "pink": (250, 120, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
# Where a single shape sits: its centre is drawn inside this box (fractions of the side).
POSITIONS: dict[str, tuple[float, float, float, float]] = {  # x0, x1, y0, y1
    "left": (0.24, 0.34, 0.32, 0.68),
    "right": (0.66, 0.76, 0.32, 0.68),
    "top": (0.32, 0.68, 0.24, 0.34),
    "bottom": (0.32, 0.68, 0.66, 0.76),
    "middle": (0.42, 0.58, 0.42, 0.58),
}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
POSITION_PHRASES["middle"] = "in the middle"
BACKGROUNDS = ("plain", "gradient", "noise")
FILL_JITTER = 24  # per channel, around COLOURS' value: other shades of the same name
TINT = 22  # a background's largest chroma per channel (0-255 units): well below every fill's
DELIVERED_SIDES = (232, 320)  # the sides a picture may come in (SIZE otherwise)
RESAMPLERS = (Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)
# A shape's radius in pixels by count: a group's copies are smaller, so that they fit apart.
RADII = {1: (24.0, 60.0), 2: (18.0, 42.0), 3: (15.0, 34.0)}


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    count: int
    position: str  # where the single shape is; "scattered" when count > 1
    background: str
    seed: int  # drives the pixel-level details (exact places, sizes, jitter, background tones)


def make_scene(rng: random.Random) -> Scene:
    count = rng.choice((1, 1, 2, 3))  # half single shapes: they carry the position questions
    position = rng.choice(tuple(POSITIONS)) if count == 1 else "scattered"
    return Scene(
        colour=rng.choice(tuple(COLOURS)),
        shape=rng.choice(SHAPES),
        count=count,
        position=position,
        background=rng.choice(BACKGROUNDS),
        seed=rng.getrandbits(32),
    )


# ---------------------------------------------------------------- conversations


def _noun(scene: Scene) -> str:
    return scene.shape if scene.count == 1 else PLURALS[scene.shape]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"  # "an orange star"


def _describe(scene: Scene) -> str:
    if scene.count == 1:
        return f"{_article(scene.colour).capitalize()} {scene.colour} {scene.shape}."
    return f"{COUNT_WORDS[scene.count].capitalize()} {scene.colour} {_noun(scene)}."


# (questions, answer) per topic. Every answer names the colour and the shape words literally:
# the evaluation checks exactly that, and a fixed phrasing is learnable by a tiny model.
def _qa_pairs(scene: Scene) -> dict[str, tuple[tuple[str, ...], str]]:
    c, noun, one = scene.colour, _noun(scene), scene.count == 1
    pairs = {
        "describe": (
            ("What is in this image?", "Describe this image.", "What do you see?", "What is in the picture?"),
            _describe(scene),
        ),
        "colour": (
            ("What colour is the shape?", "Which colour do you see?", "What colour is it?"),
            f"The {noun} {'is' if one else 'are'} {c}.",
        ),
        "shape": (
            ("What shape is it?", "Which shape do you see?", "What shape is in the image?"),
            f"It is {_article(c)} {c} {scene.shape}." if one else f"They are {c} {noun}.",
        ),
        "count": (
            ("How many shapes are there?", "Count the shapes, please."),
            f"There is one {c} {scene.shape}." if one else f"There are {COUNT_WORDS[scene.count]} {c} {noun}.",
        ),
    }
    if one:
        pairs["position"] = (
            ("Where is the shape?", "Where is it in the image?"),
            f"The {c} {scene.shape} is {POSITION_PHRASES[scene.position]}.",
        )
    return pairs


def make_conversation(scene: Scene, rng: random.Random) -> list[dict[str, str]]:
    """One or two human/gpt turns about the scene, in the original JSON turn format."""
    pairs = _qa_pairs(scene)
    topics = rng.sample(sorted(pairs), k=rng.choice((1, 2)))
    turns: list[dict[str, str]] = []
    for topic in topics:
        questions, answer = pairs[topic]
        turns.append({"from": "human", "value": rng.choice(questions)})
        turns.append({"from": "gpt", "value": answer})
    return turns


def items(n: int, seed: int) -> Iterator[tuple[str, Scene, list[dict[str, str]]]]:
    """(image name, scene, conversation) for items 0..n-1 of split `seed`: no pixels drawn."""
    for i in range(n):
        rng = random.Random(f"pandaserve-shapes/{seed}/{i}")  # str seeds hash stably (sha512)
        scene = make_scene(rng)
        yield f"{i:05d}.png", scene, make_conversation(scene, rng)


# ---------------------------------------------------------------- pixels


def _muted(rng: random.Random) -> np.ndarray:
    """A dark, middle or light grey tinted towards a random hue: never mistaken for one of COLOURS."""
    level = rng.choice((rng.uniform(15, 85), rng.uniform(120, 150), rng.uniform(160, 240)))
    hue, chroma = rng.uniform(0, 2 * math.pi), rng.uniform(0, TINT) * rng.choice((0.3, 1.0))
    tint = [chroma * math.cos(hue + k * 2 * math.pi / 3) for k in range(3)]  # sums to zero: grey kept
    return np.array([level + t for t in tint], dtype=np.float32)


def _background(kind: str, rng: random.Random) -> np.ndarray:
    base = _muted(rng)
    pixels = np.broadcast_to(base, (SIZE, SIZE, 3)).astype(np.float32)
    if kind == "gradient":
        other = _muted(rng)
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
        t = np.clip(0.5 + (xs - 0.5) * math.cos(angle) + (ys - 0.5) * math.sin(angle), 0, 1)[..., None]
        pixels = base * (1 - t) + other * t
    elif kind == "noise":
        noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 10, (SIZE, SIZE, 1))
        pixels = pixels + noise.astype(np.float32)  # grey noise: adds texture, not colour
    return pixels


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float, inner: float) -> list[tuple[float, float]]:
    def ring(radii: list[float], offset: float) -> list[tuple[float, float]]:
        k = len(radii)
        return [
            (cx + rad * math.cos(offset + 2 * math.pi * j / k), cy + rad * math.sin(offset + 2 * math.pi * j / k))
            for j, rad in enumerate(radii)
        ]

    if shape == "square":
        return ring([r] * 4, math.pi / 4 + turn)
    if shape == "triangle":
        return ring([r] * 3, -math.pi / 2 + turn)
    if shape == "star":
        return ring([r, inner * r] * 5, -math.pi / 2 + turn)
    if shape == "cross":  # a plus sign, arms `inner` r thick
        a = inner * r
        pts = [(a, r), (a, a), (r, a), (r, -a), (a, -a), (a, -r), (-a, -r), (-a, -a), (-r, -a), (-r, a), (-a, a)]
        pts.append((-a, r))
        cos, sin = math.cos(turn), math.sin(turn)
        return [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


def _places(scene: Scene, rng: random.Random) -> list[tuple[float, float, float]]:
    """(cx, cy, radius) of each copy: singles inside their position box, groups without overlap."""
    low, high = RADII[scene.count]
    if scene.count == 1:
        x0, x1, y0, y1 = POSITIONS[scene.position]
        r = rng.uniform(low, high)
        cx, cy = (min(max(rng.uniform(a, b) * SIZE, r + 2), SIZE - r - 2) for a, b in ((x0, x1), (y0, y1)))
        return [(cx, cy, r)]
    radius = rng.uniform(low, high)  # copies share a size (within 10%), so "how many" is about count
    places: list[tuple[float, float, float]] = []
    misses = 0
    while len(places) < scene.count:
        cx, cy = (rng.uniform(radius + 4, SIZE - radius - 4) for _ in range(2))
        if all(math.hypot(cx - x, cy - y) > 2.3 * radius for x, y, _ in places):
            places.append((cx, cy, radius * rng.uniform(0.9, 1.0)))
        elif (misses := misses + 1) % 100 == 0:
            places.clear()  # the first copies left no room for the rest: start over
    return places


def draw(scene: Scene) -> Image.Image:
    rng = random.Random(scene.seed)
    pixels = _background(scene.background, rng)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    scale = rng.choice((1, 2, 3, 4))  # > 1: drawn larger and downsampled, anti-aliased edges
    if scale > 1:
        image = image.resize((SIZE * scale, SIZE * scale), Image.Resampling.NEAREST)
    canvas = ImageDraw.Draw(image)
    base = COLOURS[scene.colour]
    fill = tuple(int(np.clip(v + rng.uniform(-FILL_JITTER, FILL_JITTER), 0, 255)) for v in base)  # same name
    turn = rng.uniform(-0.4, 0.4)  # a slight rotation, shared by the copies
    inner = rng.uniform(0.38, 0.5) if scene.shape == "star" else rng.uniform(0.3, 0.42)
    for cx, cy, r in _places(scene, rng):
        cx, cy, r = cx * scale, cy * scale, r * scale
        if scene.shape == "circle":
            canvas.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            canvas.polygon(_polygon(scene.shape, cx, cy, r, turn, inner), fill=fill)
    if scale > 1:
        image = image.resize((SIZE, SIZE), rng.choice(RESAMPLERS))
    if rng.random() < 0.2:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.7:  # through JPEG and back: its blocks and smeared colour edges
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=rng.randint(40, 95))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if rng.random() < 0.5:  # it comes at another size, and the service's resize brings it back
        side = rng.randint(*DELIVERED_SIDES)
        image = image.resize((side, side), rng.choice(RESAMPLERS))
    return image


def png_bytes(scene: Scene) -> bytes:
    buffer = io.BytesIO()
    draw(scene).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- files and text


def write_dataset(out: Path, n: int, seed: int) -> Path:
    """Write images/, data.json and labels.json for split `seed`; returns data.json's path."""
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records, labels = [], {}
    for name, scene, conversation in items(n, seed):
        (out / "images" / name).write_bytes(png_bytes(scene))
        records.append({"image_name": name, "conversation": conversation})
        labels[name] = {k: v for k, v in asdict(scene).items() if k in ("colour", "shape", "count", "position")}
    (out / "data.json").write_text(json.dumps(records, indent=1) + "\n")
    (out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    return out / "data.json"


def text_conversations(n: int, seed: int) -> Iterator[list[dict[str, str]]]:
    """Stage-1 text: the same conversations without images (the LLM learns the words, phrasings
    and PandaGPT's turn structure; which colour/shape is right can only come from the image)."""
    for _, _, conversation in items(n, seed):
        yield conversation


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_dataset(args.out, args.n, args.seed))


if __name__ == "__main__":
    main()
