"""The status line `pandaserve chat` draws on stderr while a turn has shown nothing yet: the upload's
progress bar, then how long the first token has been awaited. A small thread redraws it, because the
client blocks while it sends and while it waits for the first event."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import TextIO

WIDTH = 24
SPINNER = "|/-\\"


def size(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """Use as `with Progress(sys.stderr, on): ... client.chat(..., on_upload=bar.upload)`; `clear()`
    when the reply starts, so the reply's text is not mixed with the line."""

    def __init__(self, stream: TextIO, enabled: bool, tick_s: float = 0.1) -> None:
        self.stream, self.enabled, self.tick_s = stream, enabled, tick_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent, self._total = 0, 0
        self._uploading = False
        self._since = time.monotonic()
        self._frame = 0
        self._shown = False

    def __enter__(self) -> Progress:
        if self.enabled:
            self._draw()  # at once: a turn without files starts with the wait
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.clear()

    def upload(self, sent: int, total: int) -> None:
        """The client's on_upload: the bar while bytes go out, then (all sent) the wait begins."""
        if not self.enabled:
            return
        with self._lock:
            self._sent, self._total = sent, total
            was, self._uploading = self._uploading, sent < total
            if not self._uploading:
                self._since = time.monotonic()
        if was != self._uploading or not self._uploading:
            self._draw()  # each change of phase is drawn, however fast the upload was (100% is always seen)

    def clear(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
                self._shown = False

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            self._draw()

    def _line(self) -> str:
        if self._uploading or (self._total and self._sent < self._total):
            done = self._sent / self._total if self._total else 0.0
            bar = "#" * round(done * WIDTH)
            return f"uploading [{bar:<{WIDTH}}] {done:4.0%} {size(self._sent)} / {size(self._total)}"
        upload = f"uploaded [{'#' * WIDTH}] 100% {size(self._total)}; " if self._total else ""
        spin = SPINNER[self._frame % len(SPINNER)]
        return f"{upload}waiting for the first token {spin} {time.monotonic() - self._since:.1f} s"

    def _draw(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            self._frame += 1
            self.stream.write("\r\x1b[2K" + self._line())
            self.stream.flush()
            self._shown = True
