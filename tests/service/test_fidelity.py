"""Fidelity: POST /chat's greedy reply ids equal HF transformers + PEFT generate(inputs_embeds)
on prompt embeddings built independently by tests/oracle.py, for every modality and mixed turns."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import AUTH
from tests.media import valid
from tests.oracle import Oracle

pytestmark = pytest.mark.e2e

MAX_TOKENS = 12
ORDER = ("image", "audio", "video", "thermal", "depth", "imu")  # PandaGPT's slot order


@pytest.fixture(scope="module")
def oracle(demo_bundle: Path) -> Oracle:
    return Oracle(demo_bundle)


# Media per turn as (modality, seed). 1-, 2- and 3-turn chats; media in later turns join the slot
# sum (our documented extension; the original ignored later media).
CASES: dict[str, list[list[tuple[str, int]]]] = {
    "1turn-1image": [[("image", 0)]],
    "1turn-3images": [[("image", 1), ("image", 2), ("image", 3)]],
    "2turns-2images": [[("image", 4), ("image", 5)], []],
    "3turns-1image": [[("image", 6)], [], []],
    "3turns-3images": [[("image", 7), ("image", 8), ("image", 9)], [], []],
    "3turns-later-media": [[("image", 10)], [("image", 11)], [("image", 12)]],
    "audio": [[("audio", 1)], []],
    "video": [[("video", 1)], []],
    "thermal": [[("thermal", 1)]],
    "depth": [[("depth", 1)]],
    "imu": [[("imu", 1)]],
    "all-six-in-one-turn": [[(m, 20 + i) for i, m in enumerate(ORDER)]],
    "mixed-turns": [[("audio", 30), ("image", 31)], [("thermal", 32), ("video", 33)], [("imu", 34), ("depth", 35)]],
}
QUESTIONS = ["What is in this?", "What colour is the box?", "Where is it? Answer in one word."]


@pytest.mark.parametrize("case", CASES)
def test_greedy_reply_ids_equal_hf_peft(server: str, oracle: Oracle, case: str) -> None:
    history: list[tuple[str, str]] = []
    media_so_far: list[tuple[str, bytes]] = []
    session_id = None
    with httpx.Client(base_url=server, timeout=120, headers=AUTH) as client:
        for turn, media in enumerate(CASES[case]):
            files = {(m, seed): valid(m, seed) for m, seed in media}
            form = {"message": QUESTIONS[turn], "temperature": "0", "max_tokens": str(MAX_TOKENS)}
            form |= {"return_token_ids": "true"} | ({"session_id": session_id} if session_id else {})
            upload = [(m, (f"{m}{seed}", data)) for (m, seed), data in files.items()]
            r = client.post("/chat", data=form, files=upload)
            assert r.status_code == 200, r.text
            body = r.json()

            media_so_far += sorted(((m, d) for (m, _), d in files.items()), key=lambda md: ORDER.index(md[0]))
            expected = oracle.reply_ids(history, QUESTIONS[turn], media_so_far, MAX_TOKENS)
            assert body["token_ids"] == expected, f"turn {turn + 1}"
            assert body["reply"] == oracle.sp.decode(expected)
            session_id = body["session_id"]
            history.append((QUESTIONS[turn], body["reply"]))
