"""POST /chat: one multipart turn (text + media files) -> the reply, as JSON or server-sent events."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated

from fastapi import APIRouter, Form
from fastapi.responses import StreamingResponse

from service.chat import SamplingRequest, TextDelta, TurnEvent, TurnResult, final_result
from service.deps import ADMITTED, ChatDep, OwnerDep, SettingsDep
from service.errors import BadRequest, envelope, status_of
from service.schemas import ChatResponse, ErrorResponse, Usage
from service.sse import sse
from service.uploads import MediaUploads

router = APIRouter(tags=["chat"], dependencies=ADMITTED)

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
    )


async def event_stream(
    first: TurnEvent, events: AsyncGenerator[TurnEvent, None], token_ids: bool
) -> AsyncIterator[str]:
    """SSE of a started turn. A client disconnect cancels this generator; closing `events` then aborts
    the engine request, and the turn, never finished, is not committed."""
    async with aclosing(events):
        try:
            event = first
            while True:
                if isinstance(event, TextDelta):
                    yield sse({"text": event.text} | ({"token_ids": event.token_ids} if token_ids else {}), "delta")
                else:
                    yield sse(response(event, token_ids).model_dump(), "done")
                    return
                event = await anext(events)
        except Exception as exc:  # after the 200 went out, errors can only be events
            status, kind = status_of(exc)
            yield sse(envelope(kind, str(exc) if status < 500 else "internal server error"), "error")


@router.post("/chat", response_model=ChatResponse, responses=ERRORS | STREAM)
async def chat(
    chat: ChatDep,
    owner: OwnerDep,
    settings: SettingsDep,
    media: MediaUploads,
    message: Annotated[str, Form(description="The user's text for this turn")],
    session_id: Annotated[str | None, Form(description="Continue this session; omit to start one")] = None,
    max_tokens: Annotated[int | None, Form(ge=1)] = None,
    temperature: Annotated[float | None, Form(ge=0)] = None,
    top_p: Annotated[float | None, Form(gt=0, le=1)] = None,
    top_k: Annotated[int | None, Form(ge=-1)] = None,
    seed: Annotated[int | None, Form()] = None,
    stream: Annotated[bool, Form(description="Reply as server-sent events")] = False,
    return_token_ids: Annotated[bool, Form(description="Also return the reply's token ids")] = False,
) -> ChatResponse | StreamingResponse:
    if len(message) > settings.max_message_chars:
        raise BadRequest(
            f"message has {len(message)} characters, over the limit of {settings.max_message_chars}", param="message"
        )
    sampling = SamplingRequest(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    events = chat.turn(owner, session_id, message, media, sampling)
    # The first event comes after the session, media and prompt checks: their errors stay plain 4xx.
    first = await anext(events)
    if stream:
        return StreamingResponse(event_stream(first, events, return_token_ids), media_type="text/event-stream")
    return response(await final_result(first, events), return_token_ids)
