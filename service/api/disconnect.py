"""A non-streamed answer whose client has gone is not worth finishing.

A streamed turn learns of a disconnect when its next event cannot be sent, and closing its events
aborts the engine's request and commits nothing. A non-streamed turn sends nothing until the end, so
it would generate to the last token and commit a turn nobody received. `unless_disconnected` gives
the turn the same fate: it watches the connection while the answer is made and cancels it (the
engine's stream closes: an abort; the session is left as it was) if the client goes first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from service.errors import ClientGone

T = TypeVar("T")
POLL_S = 0.25  # how late a disconnect is noticed: a quarter second of generation at most


async def unless_disconnected(request: Request, answer: Coroutine[Any, Any, T]) -> T:
    task = asyncio.ensure_future(answer)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise ClientGone("the client closed the connection before the answer was ready")
    finally:
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # its cleanup (the abort) done before we go
