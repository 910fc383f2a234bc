"""PandaGPT's instruction data: loading, the image-name rule, and errors that name the item and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.data import DatasetError, Turn, load_examples

pytestmark = pytest.mark.unit

GOOD = [{"from": "human", "value": "What is this?"}, {"from": "gpt", "value": "A panda."}]
Q = GOOD[0]


def write(tmp_path: Path, items: Any, images: tuple[str, ...] = ("a.jpg", "b.png")) -> Path:
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in images:
        (tmp_path / "images" / name).write_bytes(b"not decoded here")
    path = tmp_path / "data.json"
    path.write_text(json.dumps(items))
    return path


def error(tmp_path: Path, items: Any) -> str:
    with pytest.raises(DatasetError) as info:
        load_examples(write(tmp_path, items), tmp_path / "images")
    return str(info.value)


def test_loads_items_in_order(tmp_path: Path) -> None:
    items = [
        {"image_name": "a", "conversation": GOOD},  # no extension: ".jpg" appended, as the original
        {"image_name": "b.png", "conversation": [*GOOD, {"from": "human", "value": "More?"}], "extra": 1},
    ]
    examples = load_examples(write(tmp_path, items), tmp_path / "images")
    assert [e.image for e in examples] == [tmp_path / "images" / "a.jpg", tmp_path / "images" / "b.png"]
    assert examples[0].conversation == (Turn("human", "What is this?"), Turn("gpt", "A panda."))
    assert examples[1].conversation[-1] == Turn("human", "More?")


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"image_name": "a", "conversation": [GOOD[1], Q]}, "conversation[0].from: the first turn must be 'human'"),
        ({"image_name": "a", "conversation": [Q, {"from": "bot", "value": "x"}]}, "conversation[1].from: expected"),
        ({"image_name": "a", "conversation": [Q, {"from": "gpt", "value": 3}]}, "conversation[1].value: expected"),
        ({"image_name": "a", "conversation": [Q, "hi"]}, "conversation[1]: expected an object"),
        ({"image_name": "a", "conversation": [Q]}, "conversation: no 'gpt' turn"),
        ({"image_name": "a", "conversation": []}, "conversation: expected a non-empty list of turns, got an empty"),
        ({"image_name": "a"}, "conversation: expected a non-empty list of turns, got None"),
        ({"image_name": "missing", "conversation": GOOD}, "image_name: no such image file"),
        ({"image_name": "", "conversation": GOOD}, "image_name: expected a non-empty string"),
        ({"conversation": GOOD}, "image_name: expected a non-empty string, got None"),
    ],
)
def test_errors_name_the_item_and_the_field(tmp_path: Path, item: dict[str, Any], expected: str) -> None:
    message = error(tmp_path, [{"image_name": "a", "conversation": GOOD}, item])
    assert "item 1" in message and expected in message, message
    assert "item 0" not in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    items = [{"image_name": f"x{i}", "conversation": GOOD} for i in range(15)]
    message = error(tmp_path, items)
    assert "15 problems" in message
    assert "item 0 (image_name 'x0'): image_name: no such image file" in message
    assert "... and 5 more" in message


@pytest.mark.parametrize(("content", "expected"), [({"a": 1}, "expected a non-empty JSON list"), ([], "non-empty")])
def test_the_file_must_be_a_list(tmp_path: Path, content: Any, expected: str) -> None:
    assert expected in error(tmp_path, content)


def test_not_json(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text("[{")
    with pytest.raises(DatasetError, match="cannot read a JSON file"):
        load_examples(path, tmp_path)
