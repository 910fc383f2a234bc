"""One chat turn, from uploaded media and text to a committed reply.

Knows sessions, media, the prompt template and the engine seam; knows nothing of HTTP.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass

import torch

from encoders.pool import EncoderPool, MediaInput
from encoders.projector import Projector
from service.engines.base import Engine, Sampling
from service.errors import BadRequest, NotFound, Unprocessable
from service.metrics import Metrics
from service.prompt import PromptBuilder, apply_stop_rule
from service.sessions import MediaRecord, Session, SessionStore, Turn


@dataclass(frozen=True)
class SamplingRequest:
    """What the client asked for; None means the bundle's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class TurnResult:
    session_id: str
    reply: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]


class ChatService:
    def __init__(
        self,
        *,
        pool: EncoderPool,
        projector: Projector,
        prompts: PromptBuilder,
        engine: Engine,
        store: SessionStore,
        metrics: Metrics,
        defaults: Sampling,
    ) -> None:
        self.pool = pool
        self.projector = projector
        self.prompts = prompts
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.defaults = defaults

    def sampling(self, request: SamplingRequest, prompt_tokens: int) -> Sampling:
        d = self.defaults
        room = self.engine.max_model_len - prompt_tokens
        max_tokens = request.max_tokens if request.max_tokens is not None else min(d.max_tokens, room)
        if max_tokens > room:
            raise BadRequest(
                f"max_tokens is {max_tokens} but only {max(room, 0)} tokens of context are left "
                f"(prompt {prompt_tokens}, context {self.engine.max_model_len})",
                param="max_tokens",
            )
        if max_tokens < 1:
            raise BadRequest(f"the prompt ({prompt_tokens} tokens) fills the context", param="message")
        return Sampling(
            max_tokens=max_tokens,
            temperature=d.temperature if request.temperature is None else request.temperature,
            top_p=d.top_p if request.top_p is None else request.top_p,
            top_k=d.top_k if request.top_k is None else request.top_k,
            seed=request.seed,
            stop_token_ids=d.stop_token_ids,
        )

    async def turn(
        self, session_id: str | None, message: str, media: list[MediaInput], request: SamplingRequest
    ) -> TurnResult:
        session = await self._load(session_id)
        expected_turns = len(session.turns)
        if not media and not session.media():
            raise Unprocessable(
                "the first turn of a chat needs at least one media file (image, audio, video, thermal, depth or imu)"
            )

        embeddings = await self.pool.encode(media)
        records = [
            MediaRecord.of(item.modality, hashlib.sha256(item.data).hexdigest(), len(item.data), emb)
            for item, emb in zip(media, embeddings, strict=True)
        ]

        # Media of every turn so far, in order, joins the one slot (the original reused the first turn's).
        vectors = torch.stack([m.vector() for m in session.media()] + embeddings)
        with torch.inference_mode():
            slot = self.projector.slot(vectors)
        prompt = self.prompts.build(session.history(), message, slot)
        sampling = self.sampling(request, len(prompt))

        generated: list[int] = []
        finish_reason = "length"
        async for delta in self.engine.generate(uuid.uuid4().hex, prompt, sampling):
            generated += delta.token_ids
            finish_reason = delta.finish_reason or finish_reason
        reply_ids = apply_stop_rule(generated, sampling.stop_token_ids, self.prompts.eos_id)
        reply = self.prompts.decode(reply_ids)
        self.metrics.prompt_tokens.inc(len(prompt))
        self.metrics.generation_tokens.inc(len(generated))

        session.turns.append(
            Turn(message=message, reply=reply, finish_reason=finish_reason, media=records, created_at=time.time())
        )
        await self.store.commit(session, expected_turns)
        return TurnResult(session.session_id, reply, finish_reason, len(prompt), len(generated), reply_ids)

    async def _load(self, session_id: str | None) -> Session:
        if session_id is None:
            return Session.new()
        session = await self.store.get(session_id)
        if session is None:
            raise NotFound(f"session {session_id!r} does not exist or has expired", param="session_id")
        return session

    async def get_session(self, session_id: str) -> Session:
        return await self._load(session_id)
