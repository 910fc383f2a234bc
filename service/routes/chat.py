"""POST /chat: one multipart turn (text + media files) -> the reply."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form

from service.chat import SamplingRequest
from service.deps import ChatDep, SettingsDep
from service.errors import BadRequest
from service.schemas import ChatResponse, ErrorResponse, Usage
from service.uploads import MediaUploads

router = APIRouter(tags=["chat"])

ERRORS: dict[int | str, dict] = {code: {"model": ErrorResponse} for code in (400, 404, 409, 413, 415, 422, 503)}


@router.post("/chat", response_model=ChatResponse, responses=ERRORS)
async def chat(
    chat: ChatDep,
    settings: SettingsDep,
    media: MediaUploads,
    message: Annotated[str, Form(description="The user's text for this turn")],
    session_id: Annotated[str | None, Form(description="Continue this session; omit to start one")] = None,
    max_tokens: Annotated[int | None, Form(ge=1)] = None,
    temperature: Annotated[float | None, Form(ge=0)] = None,
    top_p: Annotated[float | None, Form(gt=0, le=1)] = None,
    top_k: Annotated[int | None, Form(ge=-1)] = None,
    seed: Annotated[int | None, Form()] = None,
    return_token_ids: Annotated[bool, Form(description="Also return the reply's token ids")] = False,
) -> ChatResponse:
    if len(message) > settings.max_message_chars:
        raise BadRequest(
            f"message has {len(message)} characters, over the limit of {settings.max_message_chars}", param="message"
        )
    sampling = SamplingRequest(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    result = await chat.turn(session_id, message, media, sampling)
    return ChatResponse(
        session_id=result.session_id,
        reply=result.reply,
        finish_reason=result.finish_reason,  # type: ignore[arg-type]
        usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
        token_ids=result.token_ids if return_token_ids else None,
    )
