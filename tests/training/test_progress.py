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


def test_the_time_left_follows_the_steps_pace_from_the_first_step_seen() -> None:
    progress = Progress("align", 150, stream=io.StringIO())
    assert progress.line(0).endswith("starting")
    progress.started -= 600  # ten minutes before the first step (encoding the pictures): not the pace
    assert progress.line(10).endswith("measuring")
    assert progress._first is not None
    progress._first = (progress._first[0] - 60, 10)  # then 50 steps in a minute
    assert progress.line(60).endswith("1m48s left")  # 90 to go


def test_durations_read_as_minutes_and_seconds() -> None:
    assert [duration(s) for s in (0, 9.6, 60, 561)] == ["0s", "10s", "1m00s", "9m21s"]
