"""The synthetic shapes dataset: deterministic, in PandaGPT's original JSON format, answers true to the image."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from encoders.image import load_image
from encoders.limits import MediaLimits
from training import synthetic

pytestmark = pytest.mark.unit

N = 24


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shapes")
    synthetic.write_dataset(out, N, seed=0)
    return out


def test_generator_is_deterministic(dataset: Path, tmp_path: Path) -> None:
    synthetic.write_dataset(tmp_path, N, seed=0)
    assert (tmp_path / "data.json").read_bytes() == (dataset / "data.json").read_bytes()
    assert (tmp_path / "labels.json").read_bytes() == (dataset / "labels.json").read_bytes()
    for name in ("00000.png", f"{N - 1:05d}.png"):
        assert (tmp_path / "images" / name).read_bytes() == (dataset / "images" / name).read_bytes()


def test_item_does_not_depend_on_split_size() -> None:
    # Item i is a function of (seed, i) alone: a bigger split extends a smaller one.
    assert list(synthetic.items(5, seed=3)) == list(synthetic.items(8, seed=3))[:5]


def test_splits_differ_by_seed() -> None:
    train = [synthetic.png_bytes(scene) for _, scene, _ in synthetic.items(8, seed=0)]
    held_out = [synthetic.png_bytes(scene) for _, scene, _ in synthetic.items(8, seed=1)]
    assert not set(train) & set(held_out)


def test_json_follows_the_original_format(dataset: Path) -> None:
    records = json.loads((dataset / "data.json").read_text())
    assert len(records) == N
    for record in records:
        assert set(record) == {"image_name", "conversation"}
        assert (dataset / "images" / record["image_name"]).is_file()
        turns = record["conversation"]
        assert turns and len(turns) % 2 == 0
        for i, turn in enumerate(turns):
            assert set(turn) == {"from", "value"}
            assert turn["from"] == ("human" if i % 2 == 0 else "gpt")
            assert isinstance(turn["value"], str) and turn["value"]


def test_every_answer_names_the_true_colour_and_shape(dataset: Path) -> None:
    records = json.loads((dataset / "data.json").read_text())
    labels = json.loads((dataset / "labels.json").read_text())
    for record in records:
        truth = labels[record["image_name"]]
        for turn in record["conversation"][1::2]:
            words = turn["value"].lower().rstrip(".").split()
            assert truth["colour"] in words
            assert truth["shape"] in words or synthetic.PLURALS[truth["shape"]] in words
            others = set(synthetic.COLOURS) - {truth["colour"]}
            assert not others & set(words), turn["value"]  # exactly one colour named


def test_answers_use_an_before_a_vowel() -> None:
    scene = synthetic.Scene("orange", "star", 1, "left", "plain", seed=0)
    assert synthetic._describe(scene) == "An orange star."
    assert synthetic._qa_pairs(scene)["shape"][1] == "It is an orange star."
    assert synthetic._describe(synthetic.Scene("red", "star", 1, "left", "plain", seed=0)) == "A red star."


def test_answers_about_count_and_position_are_true() -> None:
    for _, scene, _ in synthetic.items(200, seed=0):
        pairs = synthetic._qa_pairs(scene)
        assert synthetic.COUNT_WORDS[scene.count] in pairs["count"][1].split()
        assert ("position" in pairs) == (scene.count == 1)
        if scene.count == 1:
            assert synthetic.POSITION_PHRASES[scene.position] in pairs["position"][1]


def test_image_shows_the_colour_where_the_label_says() -> None:
    for _, scene, _ in synthetic.items(12, seed=0):
        pixels = np.asarray(synthetic.draw(scene), dtype=np.int32)
        target = np.array(synthetic.COLOURS[scene.colour])
        # The fill jitters by at most FILL_JITTER per channel, and JPEG moves it a little more.
        near = np.abs(pixels - target).max(axis=-1) <= synthetic.FILL_JITTER + 16
        assert near.sum() > 200, scene  # at least a small shape's worth of pixels
        if scene.count == 1:
            ys, xs = np.nonzero(near)
            x0, x1, y0, y1 = synthetic.POSITIONS[scene.position]
            cx, cy = xs.mean() / pixels.shape[1], ys.mean() / pixels.shape[0]
            assert x0 - 0.05 <= cx <= x1 + 0.05 and y0 - 0.05 <= cy <= y1 + 0.05, scene


def test_images_go_through_the_service_preprocessing() -> None:
    sides = set()
    for _, scene, _ in synthetic.items(20, seed=0):
        data = synthetic.png_bytes(scene)
        width, height = Image.open(io.BytesIO(data)).size
        assert width == height and (width == synthetic.SIZE or 232 <= width <= 320)
        sides.add(width == synthetic.SIZE)
        assert load_image(data, "image", MediaLimits()).shape == (3, 224, 224)
    assert sides == {True, False}  # some come at 224 px, some at another size


def test_answer_words_are_whole_tokenizer_pieces() -> None:
    # The demo tokenizer knows every colour and shape word as one piece, so a tiny model
    # names them in one step (and the stage-1 corpus does not need a new vocabulary).
    import sentencepiece as spm

    from training.tokenizer import train_sentencepiece

    sp = spm.SentencePieceProcessor(model_proto=train_sentencepiece())
    for word in [*synthetic.COLOURS, *synthetic.SHAPES]:
        assert len(sp.encode(" " + word)) <= 2, word
