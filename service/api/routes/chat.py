"""POST /chat: one multipart turn (text + media files) -> the reply, as JSON or server-sent events."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import StreamingResponse

from service.api.deps import LimitsDep, ResourcesDep, TenantDep
from service.api.disconnect import unless_disconnected
from service.api.schemas import (
    ChatResponse,
    ErrorResponse,
    MaxTokens,
    MediaView,
    Seed,
    SessionId,
    Temperature,
    TopK,
    TopP,
    Usage,
)
from service.api.sse import sse, sse_error
from service.api.uploads import MediaUploads
from service.core.chat_service import SamplingRequest, TurnEvent, TurnResult, final_result
from service.core.reply import TextDelta

router = APIRouter(tags=["chat"])

ERRORS: dict[int | str, dict] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 422, 429, 503)
}
STREAM: dict[int | str, dict] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "with stream=true: `delta` events, then `done` (or `error`)",
    }
}


def response(result: TurnResult, token_ids: bool) -> ChatResponse:
    return ChatResponse(
        session_id=result.session_id or "",
        reply=result.reply,
        finish_reason=result.finish_reason,  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        token_ids=result.token_ids if token_ids else None,
        media=[MediaView.of(record) for record in result.media],
    )


async def event_stream(
    first: TurnEvent, events: AsyncGenerator[TurnEvent, None], token_ids: bool
) -> AsyncIterator[str]:
    """SSE of a started turn. A client disconnect cancels this generator; closing `events` then aborts
    the engine request, and the turn, never finished, is not committed."""
    async with aclosing(events):
        try:
            event = first
            while isinstance(event, TextDelta):
                yield sse({"text": event.text} | ({"token_ids": event.token_ids} if token_ids else {}), "delta")
                event = await anext(events)
            yield sse(response(event, token_ids).model_dump(), "done")
        except Exception as exc:
            yield sse_error(exc, "error")


@router.post("/chat", response_model=ChatResponse, responses=ERRORS | STREAM)
async def chat(
    request: Request,
    tenant: TenantDep,
    limits: LimitsDep,
    resources: ResourcesDep,
    media: MediaUploads,
    message: Annotated[str, Form(description="The user's text for this turn")],
    session_id: Annotated[SessionId | None, Form(description="Continue this session; omit to start one")] = None,
    model: Annotated[
        str | None, Form(description="One of GET /v1/models; omit for the default (a session goes on with its own)")
    ] = None,
    max_tokens: Annotated[MaxTokens | None, Form()] = None,
    temperature: Annotated[Temperature | None, Form()] = None,
    top_p: Annotated[TopP | None, Form()] = None,
    top_k: Annotated[TopK | None, Form()] = None,
    seed: Annotated[Seed | None, Form()] = None,
    stream: Annotated[bool, Form(description="Reply as server-sent events")] = False,
    return_token_ids: Annotated[bool, Form(description="Also return the reply's token ids")] = False,
) -> ChatResponse | StreamingResponse:
    # A client that names a model not served is told, not answered by another; a session keeps its own.
    chat = await resources.chat_for_turn(tenant, session_id, model)
    limits.check_message(message, "message")
    sampling = SamplingRequest(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    events = chat.turn(tenant, session_id, message, media, sampling)
    # The first event comes after the session, media and prompt checks: their errors stay plain 4xx.
    first = await anext(events)
    if stream:
        return StreamingResponse(event_stream(first, events, return_token_ids), media_type="text/event-stream")
    return response(await unless_disconnected(request, final_result(first, events)), return_token_ids)
