"""OpenAI-compatible API: POST /v1/chat/completions (stateless) and GET /v1/models.

The official SDKs work unchanged (`base_url=<server>/v1`, `api_key=<a PandaServe key>`). Errors keep
our envelope `{"error": {"type", "message", "param"}}`, which the SDKs read. Logprob tokens are
SentencePiece pieces (`id_to_piece`, "▁" shown as a space, byte pieces `<0xNN>` as their byte), not
the decode of one id: a decode drops a piece's leading space and cannot show part of a UTF-8
character; `bytes` is exact, and `token` shows bytes that are not whole UTF-8 as `\\xNN`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import sentencepiece as spm
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from service.api.deps import LimitsDep, ResourcesDep, SettingsDep, TenantDep, model_card
from service.api.disconnect import unless_disconnected
from service.api.routes.chat import ERRORS
from service.api.sse import sse, sse_error
from service.api.v1_messages import to_turn
from service.api.v1_schemas import (
    AssistantReply,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    CompletionUsage,
    ModelCard,
    ModelList,
    TokenLogprobView,
    TopLogprob,
)
from service.core.chat_service import TurnEvent, TurnResult, final_result
from service.core.reply import TextDelta
from service.engines.base import TokenLogprob

router = APIRouter(prefix="/v1", tags=["openai"])

STREAM: dict[int | str, dict] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "with stream=true: `chat.completion.chunk` data lines, then `data: [DONE]`",
    }
}


def _token(tokenizer: spm.SentencePieceProcessor, token_id: int) -> tuple[str, list[int]]:
    piece = tokenizer.id_to_piece(token_id)
    raw = bytes([int(piece[3:-1], 16)]) if tokenizer.is_byte(token_id) else piece.replace("\u2581", " ").encode()
    return raw.decode("utf-8", errors="backslashreplace"), list(raw)


def logprobs_view(
    tokenizer: spm.SentencePieceProcessor, logprobs: list[TokenLogprob] | None, top_n: int
) -> ChoiceLogprobs | None:
    if logprobs is None:
        return None
    content = []
    for lp in logprobs:
        top = []
        for token_id, value in lp.top[:top_n]:
            text, raw = _token(tokenizer, token_id)
            top.append(TopLogprob(token=text, logprob=value, bytes=raw))
        text, raw = _token(tokenizer, lp.token_id)
        content.append(TokenLogprobView(token=text, logprob=lp.logprob, bytes=raw, top_logprobs=top))
    return ChoiceLogprobs(content=content)


@dataclass(frozen=True)
class _Completion:
    """What every chunk of one completion repeats, and how to show logprobs."""

    id: str
    created: int
    model: str
    tokenizer: spm.SentencePieceProcessor
    top_n: int
    include_usage: bool

    def usage(self, result: TurnResult) -> CompletionUsage:
        total = result.prompt_tokens + result.completion_tokens
        return CompletionUsage(
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens, total_tokens=total
        )

    def chunk(
        self, delta: dict[str, str], logprobs: list[TokenLogprob] | None = None, finish: str | None = None
    ) -> str:
        view = logprobs_view(self.tokenizer, logprobs, self.top_n)
        choice = {"index": 0, "delta": delta, "logprobs": view and view.model_dump(), "finish_reason": finish}
        return sse(self._head("chat.completion.chunk") | {"choices": [choice]})

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    async def stream(self, first: TurnEvent, events: AsyncGenerator[TurnEvent, None]) -> AsyncIterator[str]:
        """SSE chunks of a started turn; a client disconnect closes `events`, which aborts the engine request."""
        async with aclosing(events):
            try:
                yield self.chunk({"role": "assistant", "content": ""})
                event = first
                while isinstance(event, TextDelta):
                    if event.text or event.logprobs:
                        yield self.chunk({"content": event.text}, event.logprobs)
                    event = await anext(events)
                yield self.chunk({}, finish=event.finish_reason)
                if self.include_usage:
                    usage = self.usage(event).model_dump()
                    yield sse(self._head("chat.completion.chunk") | {"choices": [], "usage": usage})
            except Exception as exc:
                yield sse_error(exc)
            yield sse("[DONE]")


@router.get("/models", response_model=ModelList, responses=ERRORS)
async def models(resources: ResourcesDep) -> ModelList:
    """The models this server serves (the first is the default)."""
    return ModelList(data=[model_card(m) for m in resources.models])


@router.get("/models/{model}", response_model=ModelCard, responses=ERRORS)
async def model(model: str, resources: ResourcesDep) -> ModelCard:
    return model_card(resources.served(model)[0])


@router.post("/chat/completions", response_model=ChatCompletion, responses=ERRORS | STREAM)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    tenant: TenantDep,
    settings: SettingsDep,
    limits: LimitsDep,
    resources: ResourcesDep,
) -> ChatCompletion | StreamingResponse:
    """A stateless turn from OpenAI messages (see service/api/v1_messages.py for the mapping)."""
    model, chat = resources.served(body.model)
    served = model.id
    sampling = body.sampling()
    history, message, media = await to_turn(body.messages, settings, limits, tenant)
    completion = _Completion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=served,
        tokenizer=chat.family.tokenizer,
        top_n=body.top_logprobs or 0,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )
    events = chat.complete(tenant, history, message, media, sampling)
    # The first event comes after the media and prompt checks: their errors stay plain 4xx.
    first = await anext(events)
    if body.stream:
        return StreamingResponse(completion.stream(first, events), media_type="text/event-stream")
    event = await unless_disconnected(request, final_result(first, events))
    choice = Choice(
        message=AssistantReply(content=event.reply),
        finish_reason=event.finish_reason,  # type: ignore[arg-type]
        logprobs=logprobs_view(completion.tokenizer, event.logprobs, completion.top_n),
    )
    return ChatCompletion(
        id=completion.id, created=completion.created, model=served, choices=[choice], usage=completion.usage(event)
    )
