"""A corpus of bad files over HTTP: each gets its documented 4xx naming the field and the problem,
the session stays byte-for-byte as it was, and the server stays ready."""

from __future__ import annotations

import httpx
import pytest
import redis

from service.core.session_store import KEY_PREFIX
from tests.conftest import AUTH, SERVER_LIMITS
from tests.hostile import BAD_FILES as CORPUS
from tests.media import imu_npy, picture

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(server: str) -> httpx.Client:
    with httpx.Client(base_url=server, timeout=120, headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def session(client: httpx.Client) -> str:
    r = client.post(
        "/chat", data={"message": "Look.", "max_tokens": "4"}, files=[("image", ("a.png", picture(9, (64, 48))))]
    )
    assert r.status_code == 200, r.text
    return r.json()["session_id"]


@pytest.fixture(scope="module")
def raw_redis(redis_url: str) -> redis.Redis:
    r = redis.Redis.from_url(redis_url)
    yield r
    r.close()


def test_limits_the_server_runs_with() -> None:
    assert SERVER_LIMITS["PANDASERVE_MAX_FILE_BYTES"] == 4 * 2**20  # image-too-many-bytes is one byte over


@pytest.mark.parametrize("case", CORPUS)
def test_bad_file(client: httpx.Client, raw_redis: redis.Redis, session: str, case: str) -> None:
    field, make, status, words = CORPUS[case]
    before = raw_redis.hgetall(KEY_PREFIX + session)
    r = client.post("/chat", data={"message": "And this?", "session_id": session}, files=[(field, ("f", make()))])
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == field
    assert error["message"].startswith(f"{field}[0]: ") and words in error["message"], error["message"]
    assert raw_redis.hgetall(KEY_PREFIX + session) == before
    assert client.get("/readyz").status_code == 200


def test_too_many_files_of_one_modality_is_400(client: httpx.Client, session: str) -> None:
    files = [("imu", (f"{i}.npy", imu_npy(i))) for i in range(5)]
    r = client.post("/chat", data={"message": "x", "session_id": session}, files=files)
    assert r.status_code == 400 and r.json()["error"]["param"] == "imu"


def test_too_long_a_message_is_400(client: httpx.Client, session: str) -> None:
    r = client.post("/chat", data={"message": "x" * 16_001, "session_id": session})
    assert r.status_code == 400 and r.json()["error"]["param"] == "message"
