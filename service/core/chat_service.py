"""One chat turn, from uploaded media and text to a reply, as a stream of events.

Knows sessions, media, the model family's rules and the two seams (encoder, engine); knows nothing
of HTTP. Every caller (POST /chat, its SSE stream, /v1/chat/completions) consumes the same stream:
`TextDelta`s, then one `TurnResult`. Between a route and the engine there are two generators:
`turn` (or `complete`, without a session) holds the session's lock and commits; `_reply` holds the
engine's admission, and turns the engine's tokens into final text.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field, replace

import torch
from opentelemetry import trace

from encoders.media import Encoder, MediaInput
from service.core.engine_admission import EngineAdmission
from service.core.prompt import PromptAssembler
from service.core.reply import Reply, TextDelta
from service.core.session_store import MediaRecord, Session, SessionStore, Turn
from service.engines.base import Engine, Sampling, TokenLogprob
from service.errors import BadRequest, Conflict, NotFound, StoreUnavailable, Unprocessable
from service.families.base import Exchange, Family, GenerationDefaults, Medium
from service.metrics import Metrics

log = logging.getLogger(__name__)


def cache_salt(tenant: str | None) -> str | None:
    """Each tenant's prefix-cache namespace in the engine (auth off: one tenant, no salt). A digest:
    vLLM takes at most 128 characters, and the tenant's id need not travel."""
    return None if tenant is None else hashlib.sha256(f"pandaserve:{tenant}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SamplingRequest:
    """What the client asked for; None means the bundle's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings (OpenAI's `stop`); the family's own stop rule always applies
    logprobs: int | None = None


@dataclass(frozen=True)
class TurnResult:
    session_id: str | None
    reply: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    media: list[MediaRecord] = field(default_factory=list)  # this turn's files, as they were served


TurnEvent = TextDelta | TurnResult


async def final_result(first: TurnEvent, events: AsyncGenerator[TurnEvent, None]) -> TurnResult:
    """A whole turn, not streamed: skip its deltas to its result (closing the stream on every path)."""
    async with aclosing(events):
        event = first
        while not isinstance(event, TurnResult):
            event = await anext(events)
    return event


def _one_of(names: Sequence[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1]


def _media(per_turn: Sequence[Sequence[MediaRecord]]) -> list[Medium]:
    """Every turn's media, as the family places them (each with the index of its turn)."""
    return [
        Medium(m.modality, m.soft_prompt, turn, m.audio_track, m.timestamps)
        for turn, records in enumerate(per_turn)
        for m in records
    ]


class _Timing:
    """Time to first token, inter-token latency, time per output token and end-to-end latency."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.started = self.first = self.last = time.perf_counter()
        self.deltas = 0

    def tokens_arrived(self, count: int) -> None:
        now = time.perf_counter()
        self.deltas += 1
        if self.deltas == 1:
            self.metrics.time_to_first_token.observe(now - self.started)
            self.first = now
        else:
            for _ in range(count):  # spread over the tokens of the delta
                self.metrics.inter_token_latency.observe((now - self.last) / max(count, 1))
        self.last = now

    def done(self, prompt_tokens: int, generated: int) -> None:
        self.metrics.prompt_tokens.inc(prompt_tokens)
        self.metrics.generation_tokens.inc(generated)
        self.metrics.e2e_latency.observe(self.last - self.started)
        if generated > 1:
            self.metrics.time_per_output_token.observe((self.last - self.first) / (generated - 1))


class ChatService:
    def __init__(
        self,
        *,
        model: str = "",
        encoder: Encoder,
        family: Family,
        prompts: PromptAssembler,
        engine: Engine,
        store: SessionStore,
        metrics: Metrics,
        generation: GenerationDefaults,
        tracer: trace.Tracer,
        admission: EngineAdmission,
        lock_ttl_s: float = 30.0,
        max_session_media: int = 64,
    ) -> None:
        self.model = model  # the served model's id: the sessions it starts are its own
        self.encoder = encoder
        self.family = family
        self.prompts = prompts
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.generation = generation
        self.tracer = tracer
        self.admission = admission
        self.lock_ttl_s = lock_ttl_s
        self.max_session_media = max_session_media

    def sampling(self, request: SamplingRequest, prompt_tokens: int) -> Sampling:
        d = self.generation
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
        vocab = self.prompts.vocab_size
        if request.top_k is not None and request.top_k > vocab:
            raise BadRequest(f"top_k is {request.top_k} but the vocabulary has {vocab} tokens", param="top_k")
        return Sampling(
            max_tokens=max_tokens,
            temperature=d.temperature if request.temperature is None else request.temperature,
            top_p=d.top_p if request.top_p is None else request.top_p,
            top_k=d.top_k if request.top_k is None else request.top_k,
            seed=request.seed,
            stop_token_ids=self.family.stop_rule.engine_stop_ids(),
            logprobs=request.logprobs,
        )

    async def turn(
        self,
        tenant: str | None,
        session_id: str | None,
        message: str,
        media: list[MediaInput],
        request: SamplingRequest,
    ) -> AsyncGenerator[TurnEvent, None]:
        """A turn of a stored session (created when `session_id` is None), committed only when it completes.

        The session is locked for the turn: a second concurrent turn gets Conflict. A turn that
        fails, or whose consumer stops early (a client disconnect), commits nothing.
        """
        async with self._locked(tenant, session_id) as session:
            order = self.family.modality_order
            if not media and not session.media():
                raise Unprocessable(f"the first turn of a chat needs at least one media file ({_one_of(order)})")
            # Every turn's prompt holds every medium so far, and the session stores each: bounded.
            room = self.max_session_media - len(session.media())
            if len(media) > room:
                raise BadRequest(
                    f"a session holds at most {self.max_session_media} media files and has room for {max(room, 0)} "
                    "more; start a new session",
                    param=media[max(room, 0)].field,
                )
            # A kind the family does not take sorts last; the encoders refuse it, naming its field.
            rank = {modality: i for i, modality in enumerate(order)}
            records = await self._embed(sorted(media, key=lambda item: rank.get(item.modality, len(order))))
            result = None
            # The session's id keys the engine: behind a router, every turn reaches the engine holding its prefix.
            every_medium = [*(t.media for t in session.turns), records]
            reply = self._reply(tenant, session.history(), message, _media(every_medium), request, session.session_id)
            async with aclosing(reply) as events:
                async for event in events:
                    if isinstance(event, TurnResult):
                        result = event
                    else:
                        yield event
            assert result is not None
            expected_turns = None if session_id is None else len(session.turns)  # None: a new session
            session.model = self.model
            turn = Turn(
                message=message,
                reply=result.reply,
                finish_reason=result.finish_reason,
                media=records,
                created_at=time.time(),
            )
            session.turns.append(turn)
            await self.store.commit(session, expected_turns)
            yield replace(result, session_id=session.session_id, media=records)

    async def complete(
        self,
        tenant: str | None,
        history: list[Exchange],
        message: str,
        media: list[MediaInput],
        request: SamplingRequest,
    ) -> AsyncGenerator[TurnEvent, None]:
        """A stateless turn (no session): the history and every medium come with the request."""
        if not media:
            raise Unprocessable(
                f"a chat needs at least one media file ({_one_of(self.family.modality_order)})", param="messages"
            )
        # Every medium counts as sent with the first message (a family that places media by turn
        # puts them all there).
        prompt_media = _media([await self._embed(media)])
        async with aclosing(self._reply(tenant, history, message, prompt_media, request)) as events:
            async for event in events:
                yield event

    @asynccontextmanager
    async def _locked(self, tenant: str | None, session_id: str | None) -> AsyncIterator[Session]:
        """The session to build the turn on, locked until the turn ends (a new one needs no lock)."""
        if session_id is None:
            yield Session.new(tenant)
            return
        # Ownership first: another tenant's busy session must read 404, not 409.
        await self._load(tenant, session_id)
        lock = await self.store.acquire(session_id, self.lock_ttl_s)
        if lock is None:
            raise Conflict("another turn of this session is in progress; retry when it ends", param="session_id")
        # A lease, not a long lock: renewed while the turn runs, so a replica that dies mid-turn
        # blocks its session for one short TTL and another replica then carries the conversation on.
        lease = asyncio.create_task(self._renew(session_id, lock))
        try:
            # Read under the lock: the turn builds on the latest committed history.
            yield await self._load(tenant, session_id)
        finally:
            lease.cancel()
            # Shielded: a turn cancelled here (a client gone, a shutdown) still unlocks its session.
            await asyncio.shield(self.store.release(session_id, lock))

    async def _renew(self, session_id: str, lock: str) -> None:
        """Keep the lock while the turn runs. Losing it is logged, not fatal: the commit's turn-count
        check still refuses a turn whose session changed meanwhile."""
        while True:
            await asyncio.sleep(self.lock_ttl_s / 3)
            try:
                if not await self.store.renew(session_id, lock, self.lock_ttl_s):
                    log.warning("lost the lock of session %s during a turn", session_id)
                    return
            except StoreUnavailable:
                log.warning("could not renew the lock of session %s (the store is unavailable)", session_id)

    async def _embed(self, media: list[MediaInput]) -> list[MediaRecord]:
        with self.tracer.start_as_current_span("encode media") as span:
            span.set_attribute("pandaserve.media.modalities", [item.modality for item in media])
            soft_prompts = await self.encoder.soft_prompts(media)
        return [
            MediaRecord(
                modality=item.modality,
                sha256=item.sha256,
                bytes=len(item.data),
                soft_prompt=encoded.vectors,
                audio_track=encoded.audio_track,
                timestamps=encoded.timestamps,
            )
            for item, encoded in zip(media, soft_prompts, strict=True)
        ]

    async def _prompt(
        self, history: Sequence[Exchange], message: str, media: list[Medium], request: SamplingRequest
    ) -> tuple[torch.Tensor, Sampling]:
        """The prompt's rows and the sampling, the context checked before any row is built.
        Tokenizing a long conversation takes time: off the event loop."""
        # Room for the reply the request asks for (or the default's): a family may trim history to it.
        wanted = self.generation.max_tokens if request.max_tokens is None else request.max_tokens
        budget = self.engine.max_model_len - wanted
        segments = await asyncio.to_thread(self.family.prompt, history, message, media, budget)
        sampling = self.sampling(request, sum(len(segment) for segment in segments))
        return self.prompts.assemble(segments), sampling

    async def _reply(
        self,
        tenant: str | None,
        history: Sequence[Exchange],
        message: str,
        media: list[Medium],
        request: SamplingRequest,
        affinity: str | None = None,
    ) -> AsyncGenerator[TurnEvent, None]:
        """The reply to this prompt as events, releasing text as soon as it is final.

        Admission is held from before the engine's request until it ends; leaving this generator
        early (a client disconnect, a stop string) closes the engine's stream, which aborts it.
        """
        prompt, sampling = await self._prompt(history, message, media, request)
        reply = Reply(self.family.stop_rule, self.family.tokenizer, request.stop, request.logprobs is not None)
        timing = _Timing(self.metrics)
        # Not the current span: this generator is suspended between events, and its consumer's
        # context must not change under it. Its parent is the request's span.
        span = self.tracer.start_span("generate", attributes={"pandaserve.prompt_tokens": len(prompt)})
        finish_reason = None
        try:
            with self.admission.admit(tenant, len(prompt)) as ticket:
                async with aclosing(
                    self.engine.generate(
                        uuid.uuid4().hex, prompt, sampling, affinity, cache_salt(tenant), self.family.lora is not None
                    )
                ) as deltas:
                    async for out in deltas:
                        ticket.prefilled()
                        if out.queued_s is not None:
                            self.metrics.queue_time.labels("engine").observe(out.queued_s)
                        timing.tokens_arrived(len(out.token_ids))
                        if event := reply.push(out.token_ids, out.logprobs):
                            yield event
                        if reply.stopped:
                            break  # a stop string: leaving the engine's stream aborts the request
            last = reply.finish()
            finish_reason = "stop" if reply.stopped else "length"
            if last:
                yield last
            timing.done(len(prompt), reply.generated)
            span.set_attribute("pandaserve.completion_tokens", reply.generated)
            span.set_attribute("pandaserve.finish_reason", finish_reason)
            yield TurnResult(
                None,
                self.family.clean_reply(reply.text),
                finish_reason,
                len(prompt),
                reply.generated,
                reply.ids,
                reply.logprobs if request.logprobs is not None else None,
            )
        finally:
            if finish_reason is None:
                self.metrics.aborted.inc()
                span.set_attribute("pandaserve.finish_reason", "aborted")
            span.end()

    async def _load(self, tenant: str | None, session_id: str) -> Session:
        session = await self.store.get(session_id)
        # Another tenant's session is "not found", not "forbidden": its existence must not leak.
        if session is None or session.tenant != tenant:
            raise NotFound(f"session {session_id!r} does not exist or has expired", param="session_id")
        return session

    async def get_session(self, tenant: str | None, session_id: str) -> Session:
        return await self._load(tenant, session_id)

    async def create_session(self, tenant: str | None, metadata: dict[str, str]) -> Session:
        session = Session.new(tenant, metadata)
        await self.store.commit(session, expected_turns=None)
        return session

    async def delete_session(self, tenant: str | None, session_id: str) -> None:
        await self.store.delete(await self._load(tenant, session_id))
