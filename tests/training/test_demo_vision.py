"""The demo's vision trunk computes the bag of colour and edge features its module describes, and
those features carry colour and shape (training/demo_vision.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from encoders.image import load_image
from encoders.imagebind import ImageBindModel
from encoders.limits import MediaLimits
from training import demo_vision, synthetic

pytestmark = pytest.mark.integration

# The service's normalisation constants (encoders/image.py), written out: the oracle shares no code.
MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


def images(n: int, seed: int) -> tuple[Tensor, list[synthetic.Scene]]:
    scenes = [scene for _, scene, _ in synthetic.items(n, seed)]
    pixels = [load_image(synthetic.png_bytes(s), "image", MediaLimits()) for s in scenes]
    return torch.from_numpy(np.stack(pixels)), scenes


def pooled_reference(pixels: np.ndarray) -> np.ndarray:
    """The trunk's CLS output on the pooled channels, computed from the module's description.

    Per token, 248 channels: +40, -40, the patch's mean colour (normalised units), its chroma (raw RGB
    minus its grey, x4), 48 empty hue channels, the 32 lowest non-DC DCT-II coefficients of its raw
    grey (unit-norm basis, ordered by u + v, then u) and 32 empty ones, the 32 lowest of its raw chroma
    along (2, -1, -1)/sqrt 6 and along (0, 1, -1)/sqrt 2 (x2) and 64 empty ones; the CLS token has the
    constants and the chroma's offset only. Then a LayerNorm; per token, added: GELU(30 (d . chroma -
    t)) / 30 for 12 hue directions d (30 degrees apart from red's (2, -1, -1)) and thresholds t (0.13,
    0.2, 0.3, 0.42 of raw chroma, in the LayerNorm's units) into the hue channels, and
    (GELU(10 z) + GELU(-10 z)) / 10 of every DCT z into its empty twin; a LayerNorm; the mean over all
    257 tokens, added to the CLS token's stream."""
    b = pixels.shape[0]
    grid = pixels.reshape(b, 3, 16, 14, 16, 14).transpose(0, 2, 4, 1, 3, 5).reshape(b, 256, 3, 14, 14)
    k = np.arange(14)
    order = sorted(((u, v) for u in range(14) for v in range(14)), key=lambda f: (f[0] + f[1], f[0]))[1:33]
    basis = np.stack(
        [np.outer(np.cos(np.pi * (k + 0.5) * u / 14), np.cos(np.pi * (k + 0.5) * v / 14)) for u, v in order]
    )
    basis /= np.linalg.norm(basis, axis=(1, 2), keepdims=True)
    axes = np.array([[2.0, -1.0, -1.0] / np.sqrt(6), [0.0, 1.0, -1.0] / np.sqrt(2)])
    colour = grid.mean(axis=(3, 4))
    raw = colour * STD + MEAN
    chroma = 4.0 * (raw - raw.mean(axis=2, keepdims=True))
    raw_pixels = grid * STD[:, None, None]  # raw minus the mean: a constant per channel, which no DCT sees
    dct = np.einsum("bpxy,kxy->bpk", raw_pixels.mean(axis=2), basis)
    chroma_dct = [2.0 * np.einsum("bpcxy,c,kxy->bpk", raw_pixels, axis, basis) for axis in axes]
    tokens = np.zeros((b, 257, 248))
    tokens[:, :, 0], tokens[:, :, 1] = 40.0, -40.0
    tokens[:, 0, 5:8] = 4.0 * (MEAN - MEAN.mean())  # the CLS token: constants and the chroma offset
    tokens[:, 1:, 2:5], tokens[:, 1:, 5:8], tokens[:, 1:, 56:88] = colour, chroma, dct
    tokens[:, 1:, 120:152], tokens[:, 1:, 152:184] = chroma_dct
    x = layer_norm(tokens)
    gelu = np.vectorize(lambda z: 0.5 * z * (1 + math.erf(z / math.sqrt(2))))
    spread = math.sqrt(2 * 40.0**2 / 248)
    angles = 2 * np.pi * np.arange(12) / 12
    directions = np.cos(angles)[:, None] * axes[0] + np.sin(angles)[:, None] * axes[1]
    along = x[..., 5:8] @ directions.T
    for level, t in enumerate((0.13, 0.2, 0.3, 0.42)):
        x[..., 8 + 12 * level : 20 + 12 * level] += gelu(30 * (along - t * 4.0 / spread)) / 30
    for signed, rectified in ((slice(56, 88), slice(88, 120)), (slice(120, 184), slice(184, 248))):
        x[..., rectified] += (gelu(10 * x[..., signed]) + gelu(-10 * x[..., signed])) / 10
    pooled = x[:, 0] + layer_norm(x).mean(axis=1)  # the CLS token's own stream, plus the mean
    return pooled[:, [*range(2, 5), *range(8, 56), *range(88, 120), *range(184, 248)]]


def layer_norm(x: np.ndarray) -> np.ndarray:
    centred = x - x.mean(axis=-1, keepdims=True)
    return centred / np.sqrt((centred**2).mean(axis=-1, keepdims=True) + 1e-6)


def build(whiten: bool) -> ImageBindModel:
    model = ImageBindModel(demo_vision.config())
    demo_vision.set_vision_weights_(model, seed=0, whiten=whiten)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> ImageBindModel:
    return build(whiten=True)


@torch.no_grad()
def test_cls_token_holds_the_pooled_features() -> None:
    pixels, _ = images(12, seed=7)
    model = build(whiten=False)
    prep = model.modality_preprocessors["vision"](pixels)
    cls = model.modality_trunks["vision"](**prep["trunk"])[:, 0].double().numpy()
    expected = pooled_reference(pixels.double().numpy())
    got = cls[:, demo_vision.POOLED]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # The two constants are cancelled before the head (its LayerNorm sees the features alone).
    assert np.abs(cls[:, :2]).max() < 1e-3 * np.abs(got).max()


@torch.no_grad()
def test_whitened_features_are_centred_and_decorrelated_on_held_out_images(model: ImageBindModel) -> None:
    pixels, _ = images(400, seed=11)  # not the calibration split
    features = torch.cat([demo_vision.pooled_features(model, pixels[i : i + 100]) for i in range(0, 400, 100)])
    values = torch.linalg.eigvalsh(torch.cov(features.double().T))
    print("mean", features.mean(0).abs().max().item(), "variances", values.flip(0)[:8].numpy().round(3))
    assert features.mean(0).abs().max() < 0.25  # unit variance per direction, so a small offset
    # ~1 on the calibration images; before whitening ~1e4x the floor. 400 samples of 107 white
    # dimensions have a largest sample variance near (1 + sqrt(107 / 400))^2 = 2.3 (Marchenko-Pastur).
    assert 0.7 < values.max() < 3.0


def embed(model: ImageBindModel, pixels: Tensor) -> Tensor:
    return torch.cat([model.embed("vision", pixels[i : i + 100]) for i in range(0, len(pixels), 100)])


def probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Held-out accuracy of a logistic regression on standardised embeddings."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    classifier = nn.Linear(xs.shape[1], int(train_y.max()) + 1)
    optimizer = torch.optim.LBFGS(classifier.parameters(), lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(classifier(xs), train_y) + 1e-3 * classifier.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (classifier(xt).argmax(1) == test_y).float().mean().item()


@torch.no_grad()
def test_embedding_carries_colour_and_shape(model: ImageBindModel) -> None:
    (train_px, train_scenes), (test_px, test_scenes) = images(1000, seed=100), images(300, seed=101)
    train_x, test_x = embed(model, train_px), embed(model, test_px)
    rates = {}
    for attribute, classes in (("colour", list(synthetic.COLOURS)), ("shape", list(synthetic.SHAPES))):
        train_y = torch.tensor([classes.index(getattr(s, attribute)) for s in train_scenes])
        test_y = torch.tensor([classes.index(getattr(s, attribute)) for s in test_scenes])
        with torch.enable_grad():
            rates[attribute] = probe(train_x, train_y, test_x, test_y)
    print("linear probe on held-out images:", rates)  # measured: colour ~0.93, shape ~0.76 (chance 0.14, 0.2)
    assert rates["colour"] > 0.85 and rates["shape"] > 0.65


@torch.no_grad()
def test_readout_names_colour_shape_and_count(model: ImageBindModel) -> None:
    """Block 2's fitted units: their logits at the CLS token name what held-out synthetic images show."""
    pixels, scenes = images(300, seed=101)
    prep = model.modality_preprocessors["vision"](pixels)
    cls = model.modality_trunks["vision"](**prep["trunk"])[:, 0]
    sizes = [len(classes) for classes in demo_vision.READOUT_CLASSES.values()]
    logits = cls[:, demo_vision.READOUT].split(sizes, dim=1)
    rates = {}
    for (attribute, classes), part in zip(demo_vision.READOUT_CLASSES.items(), logits, strict=True):
        truth = torch.tensor([classes.index(getattr(s, attribute)) for s in scenes])
        rates[attribute] = (part.argmax(1) == truth).float().mean().item()
    print("readout on held-out images:", rates)  # measured: colour ~1.0, shape ~0.8, count ~0.75
    assert rates["colour"] > 0.95 and rates["shape"] > 0.65 and rates["count"] > 0.6
