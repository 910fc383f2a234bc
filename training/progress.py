"""A stage's progress on stderr while a long build runs: a bar, steps done of all, the time left at the
rate so far, and what the stage measures (the loss).

On a terminal the line is redrawn in place; in a log (CI, `make demo > log`) a line is written every
tenth of the way, so the log says how far it got without holding thousands of lines.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 24  # characters of the bar


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    def __init__(self, stage: str, total: int, unit: str = "steps", stream: TextIO | None = None) -> None:
        self.stage, self.total, self.unit = stage, max(1, total), unit
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self._last_tenth = -1

    def line(self, done: int, **measured: float) -> str:
        done = min(done, self.total)
        filled = WIDTH * done // self.total
        bar = "#" * filled + "-" * (WIDTH - filled)
        elapsed = time.monotonic() - self.started
        left = f"{duration(elapsed * (self.total - done) / done)} left" if done else "starting"
        extra = "".join(f"  {name} {value:.3f}" for name, value in measured.items())
        return f"{self.stage:<7}[{bar}] {done}/{self.total} {self.unit}{extra}  {left}"

    def update(self, done: int, **measured: float) -> None:
        if self.live:
            self.stream.write("\r" + self.line(done, **measured) + "\033[K")
        elif (tenth := 10 * done // self.total) > self._last_tenth and done < self.total:  # close() ends it
            self._last_tenth = tenth
            self.stream.write(self.line(done, **measured) + "\n")
        self.stream.flush()

    def close(self, **measured: float) -> None:
        """The stage's last line, kept: how long it took."""
        line = self.line(self.total, **measured).rsplit("  ", 1)[0]
        end = f"  done in {duration(time.monotonic() - self.started)}"
        self.stream.write(("\r" + line + end + "\033[K\n") if self.live else (line + end + "\n"))
        self.stream.flush()
