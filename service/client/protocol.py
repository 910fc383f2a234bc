"""What the sync and the async client share, none of it doing I/O: the calls each method makes, the
retry rule, the upload's progress count, and the reading of a /chat event stream. The two clients
differ only in how they send, sleep and read (service/client/sync.py, service/client/aio.py)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from service.client.errors import PandaServeError
from service.client.files import Attachment, FileInput, attachment, multipart
from service.client.sse import Event
from service.client.types import ChatReply, Delta

# (bytes sent, bytes in all) as the request body goes out; called again from 0 on a retry.
UploadProgress = Callable[[int, int], None]

CHUNK = 64 * 1024  # the upload is written in pieces this size, so its progress moves while it goes


@dataclass(frozen=True)
class Call:
    """One HTTP request of the API, before any transport sees it."""

    method: str
    path: str
    data: dict[str, str] = field(default_factory=dict)
    files: tuple[Attachment, ...] = ()
    json: Any = None


def chat_call(
    message: str,
    files: Iterable[FileInput],
    session: str | None,
    stream: bool,
    sampling: dict[str, float | int | None],
    return_token_ids: bool,
) -> Call:
    data = {"message": message}
    if session is not None:
        data["session_id"] = session
    data |= {k: str(v) for k, v in sampling.items() if v is not None}
    if stream:
        data["stream"] = "true"
    if return_token_ids:
        data["return_token_ids"] = "true"
    return Call("POST", "/chat", data, tuple(attachment(f) for f in files))


def embed_call(files: Iterable[FileInput]) -> Call:
    return Call("POST", "/embeddings", files=tuple(attachment(f) for f in files))


def build(http: httpx.Client | httpx.AsyncClient, call: Call, on_upload: UploadProgress | None) -> httpx.Request:
    request = http.build_request(
        call.method, call.path, data=call.data or None, files=multipart(list(call.files)) or None, json=call.json
    )
    if on_upload is not None and call.files:
        request.stream = CountedUpload(request.stream, int(request.headers.get("content-length", 0)), on_upload)
    return request


class CountedUpload(httpx.SyncByteStream, httpx.AsyncByteStream):
    """The request body, re-chunked and counted. httpx renders a file held in memory as one chunk, so
    without re-chunking a 20 MB upload would report 0% until it was all in the socket."""

    def __init__(self, stream: Any, total: int, report: UploadProgress) -> None:
        self.stream, self.total, self.report = stream, total, report

    def _pieces(self, chunk: bytes) -> Iterator[bytes]:
        for i in range(0, len(chunk), CHUNK):
            yield chunk[i : i + CHUNK]

    def __iter__(self) -> Iterator[bytes]:
        sent = 0
        self.report(0, self.total)
        for chunk in self.stream:
            for piece in self._pieces(chunk):
                yield piece
                sent += len(piece)
                self.report(sent, self.total)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sent = 0
        self.report(0, self.total)
        async for chunk in self.stream:
            for piece in self._pieces(chunk):
                yield piece
                sent += len(piece)
                self.report(sent, self.total)


@dataclass(frozen=True)
class Retry:
    """Which refusals are tried again, and how long to wait. Only 429 and 503 are: the server refuses
    those before a turn starts (a rate limit, a full queue, a draining or starting replica) and commits
    nothing, so sending the same request again is safe. A `Retry-After` is honoured; a wait longer
    than `max_wait_s` is not waited out but raised, so a call never hangs for minutes unasked."""

    retries: int = 3
    max_wait_s: float = 30.0
    backoff_s: float = 0.5  # without Retry-After: 0.5, 1, 2, ... seconds

    def wait_s(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None to give up with this response."""
        if response.status_code not in (429, 503) or attempt >= self.retries:
            return None
        after = retry_after_s(response.headers.get("retry-after"))
        wait = after if after is not None else self.backoff_s * 2**attempt
        return wait if wait <= self.max_wait_s else None


NO_RETRY = Retry(retries=0)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """RFC 9110's Retry-After: delay-seconds, or an HTTP-date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def error(response: httpx.Response) -> PandaServeError:
    """The error of a response whose body has been read."""
    return PandaServeError.from_response(response, retry_after_s(response.headers.get("retry-after")))


class TurnReader:
    """A /chat stream's events -> its deltas, then its reply: `delta` events carry text, `done` the
    body /chat would have answered, `error` the error envelope of a failure after the 200."""

    def __init__(self) -> None:
        self.result: ChatReply | None = None

    def feed(self, event: Event) -> Delta | None:
        if event.event not in ("delta", "done", "error"):
            return None  # an event a newer server added: not ours to fail on
        try:
            body = json.loads(event.data)
        except ValueError as exc:
            problem = f"a {event.event} event is not JSON: {event.data[:200]}"
            raise PandaServeError(problem, type="stream_error") from exc
        if event.event == "error":
            raise PandaServeError.from_envelope(body)
        try:
            if event.event == "delta":
                return Delta.from_json(body)
            self.result = ChatReply.from_json(body)
            return None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            problem = f"a {event.event} event without the fields of the contract: {event.data[:200]}"
            raise PandaServeError(problem, type="stream_error") from exc

    def finish(self) -> ChatReply:
        if self.result is None:
            raise PandaServeError("the stream ended before its done event", type="stream_error")
        return self.result
