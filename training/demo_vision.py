"""A tiny ImageBind vision trunk that sees colour, shape and count: its weights are set, not learned.

Why: the demo bundle's ImageBind is tiny and random. Its embedding keeps colour (a random patch
projection averages pixel colours) but hardly shape: a linear probe on held-out synthetic images
measured shape 40% (chance 20%), and supervised training of the 2-block trunk on the synthetic
labels reached at most 49% in CPU minutes (a ViT from scratch learns locality slowly). The real
ImageBind learned its features from a billion images; the demo needs only a trunk whose embedding
carries colour, shape and count, in the real architecture and checkpoint format.

So the trunk is set to compute classic features, exactly, within ImageBind's layers (4 blocks):

    stem (patch conv)   per 14x14 patch: the mean colour, the chroma (raw RGB minus its grey), and the
                        mean chroma of each of its 4 x 4 cells; the position embedding adds a
                        position code (cos, sin of the patch's row and column)
    block 0 MLP         thresholds the chroma along HUES directions: relu(d . chroma - t), a hue
                        histogram of the saturated patches only (a background's tint stays below the
                        lowest t); and per cell, sums ramps of its chroma along OCCUPANCY_HUES directions
    block 1 MLP         clamps each cell's sum to [0, 1]: the occupancy grid, 64 x 64 cells of
                        3-4 pixels, a cell on where a shape covers about half of it or more
    block 2 attention   each of 3 heads copies one neighbouring patch's cells (right, down, down-right):
                        the position code's dot product picks the neighbour (see _set_occupancy_grid_)
    block 2 MLP         counts, per patch, its quads of 2 x 2 cells showing each of the 15 non-empty
                        patterns: how much area, edge of each direction, convex and concave corner
                        the shapes have. The Euler number, (n(1 cell) - n(3 cells) - 2 n(diagonal)) / 4,
                        is the number of shapes (on 400 held-out pictures of either generator: 99-100%)
    block 3 attention   queries and keys zero: every token averages all tokens, so the CLS token
                        receives the image's mean of the colour features and the pattern counts; the
                        value projection standardizes them (statistics of synthetic calibration
                        images, see _standardize_)
    block 3 MLP         subtracts their calibration mean and cancels the two constant channels
                        (below); READOUT_UNITS other units, fitted on the calibration images, write
                        logits of colour, shape and count into free channels (see _fit_readout_)
    head                LayerNorm, then a fixed random projection to 1024 (as ImageBind's head)

Two opposite constant channels (+B, -B, from the position embedding) make every LayerNorm before
the head nearly a fixed scaling (a token's spread is dominated by them), so the features pass in
proportion; every unit of the occupancy grid also subtracts a zero channel, which cancels the
LayerNorm's mean exactly. Measured, the readout's argmax on 400 held-out pictures: of
training/synthetic.py (another seed) colour 100%, shape 97%, count 100%; of the separately written
tests/training/heldout_scenes.py (two seeds) colour 100%, shape 89-90%, count 99.5%. The trunk
before this one, a bag of patch features (DCT edges and colours, no places), measured shape 64% and
count 63% on the latter: a count is a matter of places, which the grid has.

tests/training/test_demo_vision.py computes the trunk's CLS output (before calibration) from this
description in NumPy and matches it to 1e-4; it checks the standardized features and the readout on
held-out pictures too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import cast

import numpy as np
import torch

from encoders.image import CLIP_MEAN, CLIP_STD, load_image
from encoders.imagebind import PRESETS, ImageBindConfig, ImageBindModel
from encoders.imagebind.layers import Block
from encoders.limits import MediaLimits
from training import synthetic

WIDTH = 176  # the vision trunk's width: the channel layout below fills it (three channels spare)
PATCH = 14
CONSTANT = 40.0  # the +B/-B channels; large against the features, so LayerNorms only scale
CHROMA_SCALE = 4.0  # raw chroma is +-0.5 at most: scaled to the features' range
SHARPNESS = 10.0  # a in GELU(a z) / a ~ relu(z)
HUE_SHARPNESS = 30.0  # a in GELU(a (d.chroma - t)) / a ~ relu(d.chroma - t)
HUES = 12  # hue directions in the chroma plane, 30 degrees apart
HUE_THRESHOLDS = (0.13, 0.2, 0.3, 0.42)  # raw chroma: the lowest above every background's tint (synthetic.TINT)
# The occupancy grid: each patch is cut into CELLS x CELLS cells (rows and columns of 4, 3, 3, 4 pixels), a
# cell is "on" when its mean colour is saturated: its raw chroma along one of OCCUPANCY_HUES directions
# exceeds OCCUPANCY_THRESHOLD (a ramp OCCUPANCY_RAMP wide). Every background's tint is below it, every
# fill's chroma well above, so a cell is on when a shape covers about half of it or more.
CELLS = 4
CELL_EDGES = (0, 4, 7, 10, 14)
OCCUPANCY_HUES, OCCUPANCY_THRESHOLD, OCCUPANCY_RAMP = 6, 0.15, 0.05
PATTERN_MARGIN = 0.1  # a pattern unit is relu(match - margin) / (1 - margin): cells a little over 1 leak nothing
PATTERN_SHARPNESS = 100.0  # its GELU's a: at -margin, GELU's negative tail is nothing even summed over 4,096 quads
PATTERN_SCALE = 0.025  # a pattern's count per patch (0-16) in the residual stream: small, as SMALL
SMALL = 0.1  # the occupancy channels' scale in the residual stream: small, so LayerNorms stay a fixed scaling
PERIODS = (16, 8, 4)  # of the position code (patches): cos and sin per axis; 16 is the grid, so it wraps
NEIGHBOUR_SHARPNESS = 20.0  # the position code's score gap to the next-nearest patch is >= 1.37 x this
NEIGHBOURS = ((0, 1), (1, 0), (1, 1))  # (rows, columns) down and right: the patches a token's quads reach into
CALIBRATION_IMAGES, CALIBRATION_SEED = 5000, 500  # standardization and readout: a split of training/synthetic.py
VARIANCE_FLOOR = 1e-4  # relative to the group's largest: features of no variance are not blown up
FEATURE_SCALE = 0.1  # the standardized features' size: small against the constants, so the LayerNorm
# before the readout only scales (at 1, an image's features would change its spread by up to 40%)
READOUT_STEPS, READOUT_DECAY = 400, 1e-2  # the readout's fit (AdamW, lr 1e-2)
# Channel layout of the residual stream.
CONST, COLOUR, CHROMA, HUE = 0, 2, 5, 8
POSITION = HUE + HUES * len(HUE_THRESHOLDS)  # the position code: 2 axes x len(PERIODS) x (cos, sin)
FLAG = POSITION + 4 * len(PERIODS)  # on at the CLS token only
ZERO = FLAG + 1  # always zero: its LayerNorm output is minus the token's mean, which units subtract
CELL_CHROMA = ZERO + 1  # per cell, its raw chroma along the two chroma axes
RAMPS = CELL_CHROMA + 2 * CELLS * CELLS  # per cell: its hue ramps, summed
OCCUPANCY = RAMPS + CELLS * CELLS  # per cell: the sum clamped to [0, 1]
NEIGHBOUR = OCCUPANCY + CELLS * CELLS  # copies: the right patch's left column, the lower's top row, its corner
PATTERNS = 15  # of 2 x 2 cells, but the empty one (bits: top left, top right, bottom left, bottom right)
PATTERN = NEIGHBOUR + 2 * CELLS + 1  # per pattern: how many quads show it
# What the readout names, in order, and from which pooled features: colour from the colour ones, shape and
# count from the patterns only (measured in a NumPy prototype of these features: given the colour features
# too, a readout's shape fell from 95% to 78% on the separately written pictures, having learnt the
# training generator's quirks from them).
READOUT_CLASSES = {"colour": tuple(synthetic.COLOURS), "shape": synthetic.SHAPES, "count": (1, 2, 3)}
READOUT_UNITS = {"colour": 64, "shape": 512, "count": 64}  # the last block's MLP units that compute each
READOUT = PATTERN + PATTERNS  # the CLS token's logits, in READOUT_CLASSES' order
assert READOUT + sum(len(c) for c in READOUT_CLASSES.values()) <= WIDTH
COLOUR_FEATURES = [*range(COLOUR, COLOUR + 3), *range(HUE, POSITION)]
SHAPE_FEATURES = list(range(PATTERN, PATTERN + PATTERNS))
POOLED = COLOUR_FEATURES + SHAPE_FEATURES
READS = {"colour": COLOUR_FEATURES, "shape": SHAPE_FEATURES, "count": SHAPE_FEATURES}
POOL_BLOCK = 3  # blocks 0-2 compute the features per token; block 3 pools them at the CLS token
LAST = f"modality_trunks.vision.blocks.{POOL_BLOCK}"  # its parameters' checkpoint key prefix


def config() -> ImageBindConfig:
    """The tiny preset with a vision trunk wide enough for the features above."""
    return replace(PRESETS["tiny"], vision_embed_dim=WIDTH, vision_num_heads=4, vision_num_blocks=POOL_BLOCK + 1)


def chroma_axes() -> np.ndarray:
    """(2, 3): an orthonormal basis of the chroma plane (RGB vectors whose components sum to zero)."""
    return np.array([[2.0, -1.0, -1.0], [0.0, 1.0, -1.0]]) / np.sqrt([[6.0], [2.0]])


def hue_directions() -> np.ndarray:
    """(HUES, 3): unit RGB directions in the chroma plane, HUES evenly spaced angles from red's."""
    angles = 2 * np.pi * np.arange(HUES) / HUES
    return np.cos(angles)[:, None] * chroma_axes()[0] + np.sin(angles)[:, None] * chroma_axes()[1]


def spread() -> float:
    """A token's spread over channels when the constants dominate: each LayerNorm divides by it."""
    return math.sqrt(2 * CONSTANT**2 / WIDTH)


def cells() -> list[tuple[slice, slice]]:
    """(rows, columns) of each cell of a patch, row by row."""
    spans = [slice(a, b) for a, b in zip(CELL_EDGES, CELL_EDGES[1:], strict=False)]
    return [(rows, cols) for rows in spans for cols in spans]


def position_code(grid: int = 224 // PATCH) -> np.ndarray:
    """(grid * grid, 4 * len(PERIODS)): per patch, row by row, SMALL x (cos, sin)(2 pi z / P) of its row
    and its column z, for each period P. A dot product of two codes is SMALL^2 x the sum of
    cos(2 pi dz / P): largest (6) for the same patch, at most 4.63 for any other."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    angles = [2 * np.pi * z / period for z in (rows, cols) for period in PERIODS]
    return SMALL * np.stack([f(a) for a in angles for f in (np.cos, np.sin)], axis=1)


def _unit_(fc1: torch.Tensor, unit: int, weights: dict[int, float]) -> None:
    """Unit `unit` reads `weights` of channels, minus their sum of the ZERO channel: a LayerNorm's
    output is (x - mean) / spread, and ZERO's is -mean / spread, so the unit sees x / spread exactly."""
    for channel, w in weights.items():
        fc1[unit, channel] += w
        fc1[unit, ZERO] -= w


def _ramp_(
    fc1: torch.Tensor,
    bias1: torch.Tensor,
    fc2: torch.Tensor,
    unit: int,
    along: dict[int, float],
    threshold: float,
    width: float,
    target: int,
) -> None:
    """Units `unit`, `unit` + 1 add SMALL x clamp((along . x - threshold) / width, 0, 1) to `target`:
    relu(z) - relu(z - 1), each relu(z) as GELU(a z) / a."""
    for offset, shift in ((0, 0.0), (1, 1.0)):
        _unit_(fc1, unit + offset, {c: SHARPNESS * w / width for c, w in along.items()})
        bias1[unit + offset] = -SHARPNESS * (threshold / width + shift)
        fc2[target, unit + offset] = (1 - 2 * offset) * SMALL / SHARPNESS


def _cell_channel(row: int, col: int) -> int:
    """The channel that holds cell (row, col) of a patch's 2 x 2 quads; row or col CELLS: the next patch's."""
    if row < CELLS and col < CELLS:
        return OCCUPANCY + row * CELLS + col
    if row < CELLS:  # the right patch's left column
        return NEIGHBOUR + row
    if col < CELLS:  # the lower patch's top row
        return NEIGHBOUR + CELLS + col
    return NEIGHBOUR + 2 * CELLS  # the lower right patch's corner


def _set_occupancy_grid_(param: Callable[[str], torch.Tensor]) -> None:
    """Blocks 1 and 2: the occupancy grid and its 2 x 2 patterns, per patch.

    Block 1's MLP clamps each cell's summed ramps to [0, 1] (exactly 0 or 1 but at a shape's edge: a
    pattern unit below would count 3 of 4 cells on in a quad of cells at 1.03).
    Block 2's attention copies, per head, one neighbouring patch's cells that the patch's quads reach
    into: the queries are the position code turned by the neighbour's offset, the keys the code, so
    the score is NEIGHBOUR_SHARPNESS x sum cos(2 pi (z + offset - z') / P), 6 x it for the neighbour
    and >= 1.37 x it less for any other patch (the grid wraps: the last column's right neighbour is
    the first column, where no shape is). The CLS token's flag makes it attend to itself only.
    Block 2's MLP counts, per patch, its CELLS x CELLS quads showing each pattern: a unit per quad and
    pattern p, relu(sum over its 4 cells of (+x if p has the cell else -x) - (|p| - 1)), is 1 for p's
    exact quad and 0 for any other (the cells being 0 or 1; PATTERN_MARGIN keeps it so for cells within
    a few percent of 0 or 1). Their sums say how much area, edge, corner and diagonal the shapes have,
    and the Euler number (the count of shapes without holes) is (n(1 cell) - n(3 cells) - 2 n(diagonal)) / 4."""
    block = "modality_trunks.vision.blocks"
    fc1, bias1, fc2 = (param(f"{block}.1.mlp.{key}") for key in ("fc1.weight", "fc1.bias", "fc2.weight"))
    for cell in range(CELLS * CELLS):
        _ramp_(fc1, bias1, fc2, 2 * cell, {RAMPS + cell: 1 / SMALL}, 0.0, 1.0, OCCUPANCY + cell)

    in_proj, out_proj = param(f"{block}.2.attn.in_proj_weight"), param(f"{block}.2.attn.out_proj.weight")
    head_dim = WIDTH // config().vision_num_heads
    code = 4 * len(PERIODS)
    gain = NEIGHBOUR_SHARPNESS * math.sqrt(head_dim) / SMALL**2  # undoes SMALL^2 and the 1/sqrt(head_dim)
    for head, (down, right) in enumerate(NEIGHBOURS):
        q, k, v = (part * WIDTH + head * head_dim for part in range(3))
        for axis, offset in enumerate((down, right)):
            for i, period in enumerate(PERIODS):
                dim = 2 * (axis * len(PERIODS) + i)  # of (cos, sin) in the code, and in the head's q and k
                cos, sin = POSITION + dim, POSITION + dim + 1
                phi = 2 * math.pi * offset / period  # (cos, sin)(a + phi) from (cos, sin)(a)
                _unit_(in_proj, q + dim, {cos: gain * math.cos(phi), sin: -gain * math.sin(phi)})
                _unit_(in_proj, q + dim + 1, {sin: gain * math.cos(phi), cos: gain * math.sin(phi)})
                _unit_(in_proj, k + dim, {cos: 1.0})
                _unit_(in_proj, k + dim + 1, {sin: 1.0})
        # The flag's own dimension: the CLS token's score for itself is 50, every other score 0.
        _unit_(in_proj, q + code, {FLAG: 50 * math.sqrt(head_dim) / SMALL**2})
        _unit_(in_proj, k + code, {FLAG: 1.0})
        # The neighbour's cells that this patch's quads reach into: its first row and/or column.
        reached = [(r, c) for r in range(1 if down else CELLS) for c in range(1 if right else CELLS)]
        for j, (row, col) in enumerate(reached):
            _unit_(in_proj, v + j, {_cell_channel(row, col): 1.0})
            out_proj[_cell_channel(row + down * CELLS, col + right * CELLS), head * head_dim + j] = 1.0

    fc1, bias1, fc2 = (param(f"{block}.2.mlp.{key}") for key in ("fc1.weight", "fc1.bias", "fc2.weight"))
    unit, gain = 0, PATTERN_SHARPNESS / (1 - PATTERN_MARGIN)
    for row in range(CELLS):
        for col in range(CELLS):
            quad = [_cell_channel(row + dr, col + dc) for dr in (0, 1) for dc in (0, 1)]
            for pattern in range(1, PATTERNS + 1):
                bits = [(pattern >> b) & 1 for b in range(4)]
                _unit_(fc1, unit, {c: gain * (1 if on else -1) / SMALL for c, on in zip(quad, bits, strict=True)})
                bias1[unit] = -gain * (sum(bits) - 1 + PATTERN_MARGIN)
                fc2[PATTERN + pattern - 1, unit] = PATTERN_SCALE / PATTERN_SHARPNESS
                unit += 1


def set_vision_weights_(model: ImageBindModel, seed: int, calibrate: bool = True) -> None:
    """Overwrite the vision stem, trunk and head of a `config()` model (other modalities untouched):
    the pooled features of the docstring, then (`calibrate`) their standardization and the readout,
    in block 3."""
    _set_features_(model, seed)
    if calibrate:
        scenes = [scene for _, scene, _ in synthetic.items(CALIBRATION_IMAGES, CALIBRATION_SEED)]
        pixels = torch.from_numpy(np.stack([_pixels(s) for s in scenes]))
        cls, token_mean = _last_block_inputs(model, pixels)
        _standardize_(model, cls, token_mean)
        _fit_readout_(model, cls, token_mean, scenes, seed)


def _pixels(scene: synthetic.Scene) -> np.ndarray:
    return load_image(synthetic.png_bytes(scene), "image", MediaLimits())


def _set_features_(model: ImageBindModel, seed: int) -> None:
    if model.config.vision_embed_dim != WIDTH or model.config.vision_num_blocks != POOL_BLOCK + 1:
        raise ValueError(f"expected demo_vision.config()'s vision trunk, got {model.config}")
    # The images are normalised (v - mean) / std per channel; raw p = v * std + mean.
    std, mean = np.asarray(CLIP_STD), np.asarray(CLIP_MEAN)
    frames = 2  # an image enters as two identical frames (kernel 2 x 14 x 14): halve every weight
    stem = np.zeros((WIDTH, 3, PATCH, PATCH))
    for c in range(3):
        stem[COLOUR + c, c] = 1 / PATCH**2
        for k in range(3):  # chroma_c = p_c - mean_k(p_k)
            stem[CHROMA + c, k] = ((c == k) - 1 / 3) * std[k] * CHROMA_SCALE / PATCH**2
    for cell, (rows, cols) in enumerate(cells()):  # each cell's mean raw chroma along each axis, in raw units
        for axis, e in enumerate(chroma_axes()):
            n = (rows.stop - rows.start) * (cols.stop - cols.start)
            stem[CELL_CHROMA + 2 * cell + axis, :, rows, cols] = (e * std)[:, None, None] * spread() / n
    param = model.get_parameter  # by checkpoint key
    with torch.no_grad():
        for name, p in model.modality_trunks["vision"].named_parameters():
            # The LayerNorms' scales (the only 1-D weights) 1, everything else 0 until set below.
            p.fill_(1.0 if p.ndim == 1 and name.endswith("weight") else 0.0)
        weight = torch.from_numpy(stem / frames).float()
        param("modality_preprocessors.vision.rgbt_stem.proj.1.weight").copy_(
            weight[:, :, None].expand(-1, -1, frames, -1, -1)
        )
        pos = param("modality_preprocessors.vision.pos_embedding_helper.pos_embed")
        pos.zero_()
        pos[..., CONST], pos[..., CONST + 1] = CONSTANT, -CONSTANT
        pos[..., CHROMA : CHROMA + 3] = torch.from_numpy((mean - mean.mean()) * CHROMA_SCALE).float()
        # The patches' own: the cells' chroma offset (e . mean) and the position code; the CLS token's flag.
        offsets = torch.from_numpy(chroma_axes() @ mean * spread()).float()
        for cell in range(CELLS * CELLS):
            pos[0, 1:, CELL_CHROMA + 2 * cell : CELL_CHROMA + 2 * cell + 2] = offsets
        pos[0, 1:, POSITION : POSITION + 4 * len(PERIODS)] = torch.from_numpy(position_code() * spread()).float()
        pos[0, 0, FLAG] = SMALL * spread()  # small: the CLS token's spread stays the others'
        param("modality_preprocessors.vision.cls_token").zero_()

        # Block 0: attention adds nothing (out_proj zero); the MLP thresholds the chroma along each hue
        # direction (relu(d . chroma - t)).
        fc1, fc2 = (param(f"modality_trunks.vision.blocks.0.mlp.{fc}.weight") for fc in ("fc1", "fc2"))
        bias1 = param("modality_trunks.vision.blocks.0.mlp.fc1.bias")
        unit = 0
        # The chroma channels hold CHROMA_SCALE x raw chroma, divided by the spread (the LayerNorms).
        for level, threshold in enumerate(HUE_THRESHOLDS):
            for h, direction in enumerate(hue_directions()):
                fc1[unit, CHROMA : CHROMA + 3] = torch.from_numpy(direction * HUE_SHARPNESS).float()
                bias1[unit] = -HUE_SHARPNESS * threshold * CHROMA_SCALE / spread()
                fc2[HUE + level * HUES + h, unit] = 1 / HUE_SHARPNESS
                unit += 1
        # ... and sums, per cell, a ramp from 0 to 1 of its chroma along each of OCCUPANCY_HUES directions.
        for cell in range(CELLS * CELLS):
            for angle in 2 * np.pi * np.arange(OCCUPANCY_HUES) / OCCUPANCY_HUES:
                along = {CELL_CHROMA + 2 * cell: math.cos(angle), CELL_CHROMA + 2 * cell + 1: math.sin(angle)}
                _ramp_(fc1, bias1, fc2, unit, along, OCCUPANCY_THRESHOLD, OCCUPANCY_RAMP, RAMPS + cell)
                unit += 2
        _set_occupancy_grid_(param)
        # The last block: q = k = 0, so attention is uniform; V copies the pooled channels, out_proj is identity.
        # Each copy is minus the zero channel: the mean is of x / spread, without the tokens' own means.
        for c in POOLED:
            _unit_(param(f"{LAST}.attn.in_proj_weight"), 2 * WIDTH + c, {c: 1.0})
            param(f"{LAST}.attn.out_proj.weight")[c, c] = 1.0
        # ... and its MLP removes the constants (one unit always on: GELU(10) = 10).
        param(f"{LAST}.mlp.fc1.bias")[0] = 10.0
        fc2 = param(f"{LAST}.mlp.fc2.weight")
        fc2[CONST, 0] = -CONSTANT / spread() / 10.0
        fc2[CONST + 1, 0] = CONSTANT / spread() / 10.0
        param("modality_heads.vision.0.weight").fill_(1.0)
        param("modality_heads.vision.0.bias").zero_()
        projection = param("modality_heads.vision.2.weight")
        projection.copy_(
            torch.randn(projection.shape, generator=torch.Generator().manual_seed(seed)) / math.sqrt(WIDTH)
        )


@torch.no_grad()
def pooled_features(model: ImageBindModel, pixels: torch.Tensor) -> torch.Tensor:
    """The CLS token's pooled channels at the trunk's output, (B, len(POOLED))."""
    prep = model.modality_preprocessors["vision"](pixels)
    return model.modality_trunks["vision"](**prep["trunk"])[:, 0, POOLED]


@torch.no_grad()
def _last_block_inputs(model: ImageBindModel, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the CLS token's stream, the mean over tokens of the LayerNorm before attention), each (B, WIDTH),
    as the last block receives them. Its attention is uniform (q = k = 0), so these two determine its
    CLS output (`_last_block`): the calibration runs blocks 0-2 once, however often it changes block 3."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    norm = model.get_submodule(f"{LAST}.norm_1")
    handle = norm.register_forward_hook(lambda _m, i, out: seen.append((i[0][0].clone(), out.mean(0))))
    try:
        for batch in pixels.split(100):
            prep = model.modality_preprocessors["vision"](batch)
            model.modality_trunks["vision"](**prep["trunk"])
    finally:
        handle.remove()
    return torch.cat([cls for cls, _ in seen]), torch.cat([token_mean for _, token_mean in seen])


def _last_block(
    model: ImageBindModel, cls: torch.Tensor, token_mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last block at the CLS token: (what its MLP reads, its output), from `_last_block_inputs`."""
    block = cast(Block, model.get_submodule(LAST))
    values = torch.nn.functional.linear(
        token_mean, block.attn.in_proj_weight[2 * WIDTH :], block.attn.in_proj_bias[2 * WIDTH :]
    )
    stream = cls + block.attn.out_proj(values)
    reads = block.norm_2(stream)
    return reads, stream + block.mlp(reads)


@torch.no_grad()
def _standardize_(model: ImageBindModel, cls: torch.Tensor, token_mean: torch.Tensor) -> None:
    """Fold a standardization of the pooled features into the last block, from synthetic calibration
    images: each feature minus its calibration mean, over its standard deviation (x FEATURE_SCALE).

    Why: the features' scales differ by orders of magnitude (a diagonal quad is rare, a full one
    common), and the readout (`_fit_readout_`) and the tiny LLaMA's linear projector learn from them
    with one learning rate. Standardized features generalize better than ZCA-whitened ones to the
    separately written pictures (measured on the patterns, a readout's held-out shape: 91.5% against
    88.5%; whitening amplifies directions of 1e-7 of the largest variance, which hold the training
    generator's quirks). The block's value projection is any linear map and its always-on MLP unit
    can subtract a constant, so the trunk can emit (p - mean) / std instead of p, exactly: no extra
    layer, the same checkpoint format.
    """
    in_proj = model.get_parameter(f"{LAST}.attn.in_proj_weight")
    rows = [2 * WIDTH + c for c in POOLED]  # the value projection's rows of the pooled channels
    # The CLS output is its own stream (constant: the chroma offset) plus the pooled mean, and only
    # the pooled part passes the value projection: measure the own part with it zeroed.
    features = _last_block(model, cls, token_mean)[1][:, POOLED].double()
    in_proj[rows] = 0.0
    own = _last_block(model, cls[:1], token_mean[:1])[1][0, POOLED].double()
    variances = features.var(0)
    # A floor on the variances, per group: a feature of (nearly) no variance is not blown up.
    for group in variances.split([len(COLOUR_FEATURES), len(SHAPE_FEATURES)]):
        group.clamp_(min=group.max().item() * VARIANCE_FLOOR)
    scale = FEATURE_SCALE * variances.rsqrt()
    for row, c, s in zip(rows, POOLED, scale.tolist(), strict=True):  # as before: (pooled - zero) / std
        _unit_(in_proj, row, {c: s})
    # own + S pooled + b = S (own + pooled - mean), the always-on unit adding b.
    fc2 = model.get_parameter(f"{LAST}.mlp.fc2.weight")
    fc2[POOLED, 0] = ((scale * (own - features.mean(0)) - own) / 10.0).float()


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> torch.Tensor:
    bound = 1 / math.sqrt(fan_in)
    return ((torch.rand(shape, generator=generator) * 2 - 1) * bound).requires_grad_()


def _fit_readout_(
    model: ImageBindModel, cls: torch.Tensor, token_mean: torch.Tensor, scenes: list[synthetic.Scene], seed: int
) -> None:
    """Fit the last block's free MLP units as a readout of colour, shape and count, on the calibration images.

    Why: which colour, shape and count the features show is not a linear function of them (a count is
    the Euler number, a ratio of the patterns' sums tells shapes apart), and the tiny LLaMA sees the
    embedding through a linear projector only. The block's MLP, at the CLS token, is a
    one-hidden-layer network on the standardized features: READOUT_UNITS of its units per attribute are
    fitted (cross-entropy, AdamW) to the synthetic labels on the features in READS and write their
    logits to the READOUT channels, which the head passes on with the features. The trunk keeps
    ImageBind's architecture and checkpoint format.
    """
    with torch.no_grad():
        inputs = _last_block(model, cls, token_mean)[0]
    generator = torch.Generator().manual_seed(seed)
    fc1, bias1 = model.get_parameter(f"{LAST}.mlp.fc1.weight"), model.get_parameter(f"{LAST}.mlp.fc1.bias")
    fc2, bias2 = model.get_parameter(f"{LAST}.mlp.fc2.weight"), model.get_parameter(f"{LAST}.mlp.fc2.bias")
    unit, logit = 1, READOUT  # unit 0 is the always-on one
    for name, classes in READOUT_CLASSES.items():
        reads, units = READS[name], READOUT_UNITS[name]
        # Minus the zero channel (the LayerNorm's mean), over FEATURE_SCALE, and centred: the standardized
        # features (the MLP reads them before its own unit 0 subtracts their mean; b1 absorbs it below).
        x = (inputs[:, reads] - inputs[:, ZERO, None]) / FEATURE_SCALE
        offset = x.mean(0)
        x = x - offset
        target = torch.tensor([classes.index(getattr(s, name)) for s in scenes])
        # torch.nn.Linear's initialisation (uniform within 1 / sqrt(fan-in)): measured, a zero output
        # layer and Gaussian input weights fitted the training generator as well but named the separately
        # written pictures' shapes less often (86-91% against 91-94% over three seeds).
        w1, b1 = (_uniform(shape, len(reads), generator) for shape in ((units, len(reads)), (units,)))
        w2 = _uniform((len(classes), units), units, generator)
        b2 = torch.zeros(len(classes), requires_grad=True)
        optimizer = torch.optim.AdamW([w1, b1, w2, b2], lr=1e-2, weight_decay=READOUT_DECAY)
        with torch.enable_grad():  # whatever the caller's mode
            for _ in range(READOUT_STEPS):
                logits = torch.nn.functional.gelu(x @ w1.T + b1) @ w2.T + b2
                loss = torch.nn.functional.cross_entropy(logits, target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            hidden, out = slice(unit, unit + units), slice(logit, logit + len(classes))
            fc1[hidden] = 0.0
            for row, weights in zip(range(unit, unit + units), (w1 / FEATURE_SCALE).tolist(), strict=True):
                _unit_(fc1, row, dict(zip(reads, weights, strict=True)))
            bias1[hidden] = b1 - w1 @ offset
            fc2[out, hidden] = w2
            bias2[out] = b2
        unit, logit = unit + units, logit + len(classes)
