"""Server-sent events: one `data:` line of JSON per event, as OpenAI-style clients expect."""

from __future__ import annotations

import json
from typing import Any

from service.api.error_handlers import error_body


def sse(payload: dict[str, Any] | str, event: str | None = None) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"


def sse_error(exc: Exception, event: str | None = None) -> str:
    """A failure after the 200 went out: it can only be an event now (a 5xx is logged, its cause not shown)."""
    return sse(error_body(exc)[1], event)
