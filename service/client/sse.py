"""Server-sent events, parsed as the WHATWG spec reads them: the one SSE parser in the repo (the client,
the CLI, the benchmarks and the remote engine's reading of vLLM all go through it).

The parser is fed lines (without their line ending: what httpx's `iter_lines`/`aiter_lines` give) and
hands back an `Event` at each blank line, so one state machine serves sync and async readers alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    event: str  # "message" when the server named none
    data: str  # the event's `data:` lines joined by "\n"
    id: str | None = None
    retry_ms: int | None = None


class SSEDecoder:
    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def line(self, line: str) -> Event | None:
        """Feed one line; an event when it was the blank line that ends one that has data."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):  # a comment (servers send these as keep-alives)
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]  # only the one space after the colon is syntax
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None  # unknown fields are ignored, as the spec says

    def _dispatch(self) -> Event | None:
        # An event without data lines is dropped (the spec's rule); its name does not leak into the next.
        event = Event(self._event or "message", "\n".join(self._data), self._id, self._retry) if self._data else None
        self._event, self._data, self._retry = "", [], None  # the last id persists, as in the spec
        return event


def iter_events(lines: Iterable[str]) -> Iterator[Event]:
    decoder = SSEDecoder()
    for line in lines:
        if (event := decoder.line(line)) is not None:
            yield event
    # A stream cut before its final blank line: the unfinished event is not delivered (the spec's rule).


async def aiter_events(lines: AsyncIterable[str]) -> AsyncIterator[Event]:
    decoder = SSEDecoder()
    async for line in lines:
        if (event := decoder.line(line)) is not None:
            yield event
