"""The build's progress lines: a bar, steps, the measured loss and the time left; in a log, one line
per tenth of the way and a last line with the stage's time."""

from __future__ import annotations

import io

import pytest

from training.progress import Progress, duration

pytestmark = pytest.mark.unit


def test_a_log_gets_a_line_per_tenth_and_the_last_line_says_how_long() -> None:
    log = io.StringIO()  # not a terminal
    progress = Progress("align", 3000, stream=log)
    progress.started -= 30  # 30 s in
    for step in range(1, 3001):
        progress.update(step, loss=1.0 / step)
    progress.close(loss=0.25)
    lines = log.getvalue().splitlines()
    assert len(lines) == 11  # tenths 0-9, then the end
    assert lines[0].startswith("align  [------------------------] 1/3000 steps  loss 1.000  ")
    assert lines[5].startswith("align  [############------------] 1500/3000 steps")
    assert lines[5].endswith("left") and "\r" not in log.getvalue()
    assert lines[-1].startswith("align  [########################] 3000/3000 steps  loss 0.250  done in 30s")


def test_the_time_left_follows_the_rate_so_far() -> None:
    progress = Progress("text", 150, stream=io.StringIO())
    progress.started -= 60
    assert progress.line(50).endswith("2m00s left")  # 50 steps a minute, 100 to go
    assert progress.line(0).endswith("starting")


def test_durations_read_as_minutes_and_seconds() -> None:
    assert [duration(s) for s in (0, 9.6, 60, 561)] == ["0s", "10s", "1m00s", "9m21s"]
