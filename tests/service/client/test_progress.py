"""`pandaserve chat`'s status line: every phase drawn at least once, however fast it passes, and
cleared before the reply."""

from __future__ import annotations

import io

import pytest

from service.client.progress import Progress, size

pytestmark = pytest.mark.unit


def test_the_upload_bar_then_the_wait_then_nothing() -> None:
    out = io.StringIO()
    with Progress(out, enabled=True, tick_s=60) as bar:  # no ticks: only what each phase draws itself
        bar.upload(0, 2_500_000)
        bar.upload(1_000_000, 2_500_000)  # mid-way: left to the ticker
        bar.upload(2_500_000, 2_500_000)
        frames = out.getvalue().split("\r\x1b[2K")[1:]
        bar.clear()
    assert frames[0].startswith("waiting for the first token")  # drawn at once: a turn may have no files
    assert frames[1] == "uploading [                        ]   0% 0 B / 2.5 MB"
    assert frames[2].startswith("uploaded [########################] 100% 2.5 MB; waiting for the first token")
    assert out.getvalue().endswith("\r\x1b[2K")  # the line is gone before the reply is written


def test_off_it_writes_nothing() -> None:
    out = io.StringIO()
    with Progress(out, enabled=False) as bar:
        bar.upload(5, 10)
    assert out.getvalue() == ""
    assert [size(n) for n in (999, 1000, 12_345_678)] == ["999 B", "1.0 KB", "12.3 MB"]
