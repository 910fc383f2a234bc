"""The decode deadline's alarm, in this process (a decode worker runs the same function): it stops a
decode that runs long, even where a C library's callback drops the exception it raises."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest

import encoders.pool as pool_module
from encoders.errors import MediaTooCostly
from encoders.limits import MediaLimits
from encoders.modalities import MODALITIES

pytestmark = pytest.mark.unit


@pytest.fixture
def alarm() -> Iterator[None]:
    before = signal.signal(signal.SIGALRM, pool_module._on_alarm)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, before)


def slow_load(swallow: bool):  # noqa: ANN201
    def load(data: bytes, field: str, limits: MediaLimits) -> np.ndarray:
        end = time.monotonic() + 0.5
        while time.monotonic() < end:
            try:
                time.sleep(0.01)
            except BaseException:  # what a C library's callback does with an exception: drop it
                if not swallow:
                    raise
        return np.zeros(3, np.float32)

    return load


@pytest.mark.parametrize("swallow", [False, True], ids=["raised", "dropped-in-a-callback"])
def test_a_decode_past_its_deadline_is_stopped(alarm: None, swallow: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODALITIES, "imu", replace(MODALITIES["imu"], load=slow_load(swallow)))
    with pytest.raises(MediaTooCostly, match=r"^imu\[0\]: decoding took longer than the limit of 0.1 s"):
        pool_module._decode(MODALITIES["imu"].load, b"", "imu[0]", MediaLimits(), 0.1)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # disarmed after


def test_a_decode_within_its_deadline_is_untouched(alarm: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(MODALITIES, "imu", replace(MODALITIES["imu"], load=slow_load(False)))
    array, _, seconds = pool_module._decode(MODALITIES["imu"].load, b"", "imu[0]", MediaLimits(), 5.0)
    assert array.shape == (3,) and 0.5 <= seconds < 5
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
