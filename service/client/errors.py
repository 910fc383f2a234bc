"""The client's one exception: what the server's error envelope `{"error": {"type", "message", "param"}}`
says, with the HTTP status, so a caller (or the CLI) catches one type and can show the server's words."""

from __future__ import annotations

import json
from typing import Any

import httpx


class PandaServeError(Exception):
    """`status` is the HTTP status; None when no response came (the connection failed) or when the
    error arrived as an `error` event in a stream that had already answered 200."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str = "error",
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "error"
        return f"{where} {self.type}: {self.message}"

    @classmethod
    def from_envelope(cls, body: Any, status: int | None = None, retry_after_s: float | None = None) -> PandaServeError:
        """From a parsed error body; a body of another shape is shown as it is rather than lost."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and "message" in error:
            param = error.get("param")
            return cls(
                str(error["message"]),
                status=status,
                type=str(error.get("type") or "error"),
                param=None if param is None else str(param),
                retry_after_s=retry_after_s,
            )
        return cls(json.dumps(body)[:500], status=status, retry_after_s=retry_after_s)

    @classmethod
    def from_response(cls, response: httpx.Response, retry_after_s: float | None = None) -> PandaServeError:
        """From an error response whose body has been read. Proxies in front of the service may answer
        in HTML or plain text: then the text itself is the message."""
        try:
            body = response.json()
        except ValueError:
            text = response.text.strip()[:500] or response.reason_phrase
            return cls(text, status=response.status_code, type="http_error", retry_after_s=retry_after_s)
        return cls.from_envelope(body, response.status_code, retry_after_s)

    @classmethod
    def from_transport(cls, exc: httpx.TransportError, url: str) -> PandaServeError:
        kind = "timeout_error" if isinstance(exc, httpx.TimeoutException) else "connection_error"
        return cls(f"{url}: {exc or type(exc).__name__}", type=kind)
