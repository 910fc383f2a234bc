from pathlib import Path

import pytest

from tests.media import valid
from tests.service.test_two_families import chat, server, videollama  # noqa: F401
from tests.service.test_videollama_serving import Oracle as VideoLlamaOracle
from tests.service.test_videollama_serving import sounding_video

pytestmark = pytest.mark.e2e


def test_debug(server: str, videollama: Path) -> None:  # noqa: F811
    vl = VideoLlamaOracle(videollama, "vicuna")
    for media in ([("video", sounding_video(11))], [("video", valid("video", 2))], [("image", valid("image", 3))]):
        r = chat(server, {"message": "What is in this?", "model": "videollama"}, [(m, (m, d)) for m, d in media])
        asked = [(media, "What is in this?")]
        print(media[0][0], r.json()["token_ids"], vl.reply_ids(asked, []))
