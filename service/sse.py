"""Server-sent events: one `data:` line of JSON per event, as OpenAI-style clients expect."""

from __future__ import annotations

import json
from typing import Any


def sse(payload: dict[str, Any] | str, event: str | None = None) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
