"""PandaGPT's instruction data: load and validate it.

Format (the released `pandagpt4_visual_instruction_data.json`, and your own data):

    [{"image_name": "000000426538",
      "conversation": [{"from": "human", "value": "What is in the picture?"},
                       {"from": "gpt", "value": "A panda eating bamboo."},
                       {"from": "human", "value": "..."}, ...]}, ...]

Images live under an image root; a name with no extension gets ".jpg" (the released names have
none). The first turn is the human's; "gpt" turns are what the model learns to say.

Every problem is reported with the item's index, its image name and the field, e.g.
`item 12 (image_name '0001'): conversation[3].from: expected 'human' or 'gpt', got 'bot'`,
and all of them at once (the first few shown), so a large file is fixed in one pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("human", "gpt")
_SHOW = 10  # problems listed in one error message


class DatasetError(ValueError):
    """The data file is unusable; the message names every item and field at fault (the first few)."""


@dataclass(frozen=True)
class Turn:
    role: str  # "human" or "gpt"
    value: str


@dataclass(frozen=True)
class Example:
    image: Path
    conversation: tuple[Turn, ...]


def image_path(root: Path, name: str) -> Path:
    """The original appended ".jpg" to every name not ending in ".jpg" (so "a.png" became "a.png.jpg");
    we append it only to names with no extension, which is the same for the released data."""
    return root / (name if Path(name).suffix else name + ".jpg")


def load_examples(data_path: str | Path, image_root: str | Path) -> list[Example]:
    """Read and validate the JSON list; raise DatasetError naming each bad item and field."""
    data_path, image_root = Path(data_path), Path(image_root)
    try:
        items = json.loads(data_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{data_path}: cannot read a JSON file: {exc}") from exc
    if not isinstance(items, list) or not items:
        raise DatasetError(f"{data_path}: expected a non-empty JSON list of items, got {_kind(items)}")
    examples, problems = [], []
    for index, item in enumerate(items):
        example, item_problems = _parse_item(item, image_root)
        where = _where(index, item)
        problems += [f"{where}: {problem}" for problem in item_problems]
        if example is not None:
            examples.append(example)
    if problems:
        shown = "\n  ".join(problems[:_SHOW])
        more = f"\n  ... and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
        raise DatasetError(f"{data_path}: {len(problems)} problems:\n  {shown}{more}")
    return examples


def _parse_item(item: Any, image_root: Path) -> tuple[Example | None, list[str]]:
    if not isinstance(item, dict):
        return None, [f"expected an object with image_name and conversation, got {_kind(item)}"]
    problems = []
    name = item.get("image_name")
    path = None
    if not isinstance(name, str) or not name:
        problems.append(f"image_name: expected a non-empty string, got {_kind(name)}")
    else:
        path = image_path(image_root, name)
        if not path.is_file():
            problems.append(f"image_name: no such image file {path}")
    turns, turn_problems = _parse_conversation(item.get("conversation"))
    problems += turn_problems
    if problems or path is None:
        return None, problems
    return Example(path, turns), []


def _parse_conversation(conversation: Any) -> tuple[tuple[Turn, ...], list[str]]:
    if not isinstance(conversation, list) or not conversation:
        return (), [f"conversation: expected a non-empty list of turns, got {_kind(conversation)}"]
    turns, problems = [], []
    for i, turn in enumerate(conversation):
        field = f"conversation[{i}]"
        if not isinstance(turn, dict):
            problems.append(f"{field}: expected an object with from and value, got {_kind(turn)}")
            continue
        role, value = turn.get("from"), turn.get("value")
        if role not in ROLES:
            problems.append(f"{field}.from: expected 'human' or 'gpt', got {role!r}")
        if not isinstance(value, str):
            problems.append(f"{field}.value: expected a string, got {_kind(value)}")
        if role in ROLES and isinstance(value, str):
            turns.append(Turn(role, value))
    if not problems:
        if turns[0].role != "human":  # the original asserted this (its template starts with the human)
            problems.append(f"conversation[0].from: the first turn must be 'human', got {turns[0].role!r}")
        elif not any(t.role == "gpt" for t in turns):  # nothing to learn: every label would be -100
            problems.append("conversation: no 'gpt' turn, so nothing to learn from this item")
    return tuple(turns), problems


def _where(index: int, item: Any) -> str:
    name = item.get("image_name") if isinstance(item, dict) else None
    return f"item {index}" + (f" (image_name {name!r})" if isinstance(name, str) else "")


def _kind(value: Any) -> str:
    """A short description of a wrong value for an error message."""
    if isinstance(value, list | dict):
        return f"an empty {type(value).__name__}" if not value else f"a {type(value).__name__}"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    return repr(value) if value is None or isinstance(value, int | float) else type(value).__name__
