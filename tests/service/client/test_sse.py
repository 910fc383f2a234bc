"""The one SSE parser (service/client/sse.py), against the WHATWG rules a server may lean on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from service.client.sse import Event, SSEDecoder, aiter_events, iter_events

pytestmark = pytest.mark.unit


def lines(text: str) -> list[str]:
    return text.splitlines()  # what httpx's iter_lines gives: \n, \r\n and \r all end a line


def test_events_as_the_server_writes_them() -> None:
    text = 'event: delta\ndata: {"text": "Two"}\n\nevent: done\ndata: {"reply": "Two"}\n\n'
    assert list(iter_events(lines(text))) == [Event("delta", '{"text": "Two"}'), Event("done", '{"reply": "Two"}')]


def test_spec_details() -> None:
    text = (
        ": a comment, a keep-alive\n"
        "data: first\ndata:second\ndata:  third\n\n"  # lines joined by \n; only one space after the colon is syntax
        "event: named\n\n"  # no data: dropped, and its name does not carry over
        "id: 7\nretry: 1500\ndata\n\n"  # a field with no colon has the empty value
        "unknown: field\ndata: x\r\n\r\n"  # unknown fields ignored; CRLF endings
        "data: cut off before its blank line\n"
    )
    assert list(iter_events(lines(text))) == [
        Event("message", "first\nsecond\n third"),
        Event("message", "", "7", 1500),
        Event("message", "x", "7"),  # the last id persists
    ]


def test_the_decoder_is_fed_line_by_line() -> None:
    decoder = SSEDecoder()
    assert [decoder.line(x) for x in ("event: delta", "data: 1", "")] == [None, None, Event("delta", "1")]


async def test_the_async_reader_uses_the_same_decoder() -> None:
    async def source() -> AsyncIterator[str]:
        for line in ("data: a", "", "event: done", "data: b", ""):
            yield line

    assert [e async for e in aiter_events(source())] == [Event("message", "a"), Event("done", "b")]
