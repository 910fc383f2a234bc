"""One chat turn, from uploaded media and text to a reply, as a stream of events.

Knows sessions, media, the prompt template and the engine seam; knows nothing of HTTP.
Every caller (POST /chat, its SSE stream, /v1/chat/completions) consumes the same stream:
`TextDelta`s, then one `TurnResult`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field, replace

import torch
from opentelemetry import trace

from encoders.pool import EncoderPool, MediaInput
from encoders.projector import Projector
from service.engines.base import Delta, Engine, Sampling, TokenLogprob
from service.errors import BadRequest, Conflict, NotFound, Overloaded, Unprocessable
from service.metrics import Metrics
from service.prompt import PromptBuilder
from service.sessions import MediaRecord, Session, SessionStore, Turn

REPLACEMENT = "\ufffd"  # what a decode of an incomplete UTF-8 byte sequence ends with


@dataclass(frozen=True)
class SamplingRequest:
    """What the client asked for; None means the bundle's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings (OpenAI's `stop`); PandaGPT's own stop rule always applies
    logprobs: int | None = None


@dataclass(frozen=True)
class TextDelta:
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class TurnResult:
    session_id: str | None
    reply: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None


TurnEvent = TextDelta | TurnResult


async def final_result(first: TurnEvent, events: AsyncGenerator[TurnEvent, None]) -> TurnResult:
    """A whole turn, not streamed: skip its deltas to its result (closing the stream on every path)."""
    async with aclosing(events):
        event = first
        while not isinstance(event, TurnResult):
            event = await anext(events)
    return event


class EngineAdmission:
    """Bounds on the work waiting for the engine: turns in flight, and prompt tokens not yet prefilled
    (a long line of prefills is what makes time to first token grow). Beyond them a turn is refused
    at once (Overloaded -> 503 + Retry-After) instead of waiting without bound."""

    def __init__(self, max_requests: int, max_queued_prompt_tokens: int) -> None:
        self.max_requests = max_requests
        self.max_queued_prompt_tokens = max_queued_prompt_tokens
        self.requests = 0
        self.queued_prompt_tokens = 0

    def enter(self, prompt_tokens: int) -> None:
        # A prompt longer than the token bound still goes in alone: otherwise it could never run.
        queued = self.queued_prompt_tokens
        if self.requests >= self.max_requests or (queued and queued + prompt_tokens > self.max_queued_prompt_tokens):
            raise Overloaded(
                f"the engine is at capacity ({self.requests} turns in flight, {self.queued_prompt_tokens} prompt "
                "tokens queued); retry shortly"
            )
        self.requests += 1
        self.queued_prompt_tokens += prompt_tokens

    def prefilled(self, prompt_tokens: int) -> None:
        self.queued_prompt_tokens -= prompt_tokens

    def leave(self, prompt_tokens: int, prefilled: bool) -> None:
        self.requests -= 1
        if not prefilled:
            self.queued_prompt_tokens -= prompt_tokens


@dataclass
class _Reply:
    """The reply being released while the engine generates (see `_stream`)."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    sent_text: str = ""
    sent_tokens: int = 0


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
        tracer: trace.Tracer,
        admission: EngineAdmission,
        lock_ttl_s: float = 600.0,
    ) -> None:
        self.pool = pool
        self.projector = projector
        self.prompts = prompts
        self.engine = engine
        self.store = store
        self.metrics = metrics
        self.defaults = defaults
        self.tracer = tracer
        self.admission = admission
        self.lock_ttl_s = lock_ttl_s

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
            logprobs=request.logprobs,
        )

    async def turn(
        self, owner: str | None, session_id: str | None, message: str, media: list[MediaInput], request: SamplingRequest
    ) -> AsyncGenerator[TurnEvent, None]:
        """A turn of a stored session (created when `session_id` is None), committed only when it completes.

        The session is locked for the turn: a second concurrent turn gets Conflict. A turn that
        fails, or whose consumer stops early (a client disconnect), commits nothing.
        """
        lock = None
        if session_id:
            # Ownership first: another tenant's busy session must read 404, not 409.
            await self._load(owner, session_id)
            lock = await self.store.acquire(session_id, self.lock_ttl_s)
            if lock is None:
                raise Conflict("another turn of this session is in progress; retry when it ends", param="session_id")
        try:
            # Read under the lock: the turn builds on the latest committed history.
            session = await self._load(owner, session_id) if session_id else Session.new(owner)
            if not media and not session.media():
                raise Unprocessable(
                    "the first turn of a chat needs at least one media file "
                    "(image, audio, video, thermal, depth or imu)"
                )
            records = await self._embed(media)
            result: TurnResult | None = None
            async with aclosing(
                self._generate(session.history(), message, session.media() + records, request)
            ) as events:
                async for event in events:
                    if isinstance(event, TurnResult):
                        result = event
                    else:
                        yield event
            assert result is not None
            expected_turns = len(session.turns)
            session.turns.append(
                Turn(
                    message=message,
                    reply=result.reply,
                    finish_reason=result.finish_reason,
                    media=records,
                    created_at=time.time(),
                )
            )
            await self.store.commit(session, expected_turns)
            yield replace(result, session_id=session.session_id)
        finally:
            if session_id and lock:
                await self.store.release(session_id, lock)

    async def complete(
        self, history: list[tuple[str, str]], message: str, media: list[MediaInput], request: SamplingRequest
    ) -> AsyncGenerator[TurnEvent, None]:
        """A stateless turn (no session): the history and every medium come with the request."""
        if not media:
            raise Unprocessable("a PandaGPT chat needs at least one media file", param="messages")
        async with aclosing(self._generate(history, message, await self._embed(media), request)) as events:
            async for event in events:
                yield event

    async def _embed(self, media: list[MediaInput]) -> list[MediaRecord]:
        with self.tracer.start_as_current_span("encode media") as span:
            span.set_attribute("pandaserve.media.modalities", [item.modality for item in media])
            embeddings = await self.pool.encode(media)
        return [
            MediaRecord.of(item.modality, item.sha256, len(item.data), emb)
            for item, emb in zip(media, embeddings, strict=True)
        ]

    async def _generate(
        self, history: list[tuple[str, str]], message: str, media: list[MediaRecord], request: SamplingRequest
    ) -> AsyncGenerator[TurnEvent, None]:
        """The prompt for this turn, then its reply as events; counts generations that end early."""
        started = time.perf_counter()
        # Media of every turn so far, in order, join the one slot (the original reused the first turn's).
        with torch.inference_mode():
            slot = self.projector.slot(torch.stack([m.vector() for m in media]))
        prompt = self.prompts.build(history, message, slot)
        sampling = self.sampling(request, len(prompt))
        # Not the current span: this generator is suspended between events, and its consumer's
        # context must not change under it. Its parent is the request's span.
        span = self.tracer.start_span("generate", attributes={"pandaserve.prompt_tokens": len(prompt)})
        completed = False
        try:
            async with aclosing(self._stream(prompt, sampling, request, started)) as events:
                async for event in events:
                    if isinstance(event, TurnResult):
                        completed = True
                        span.set_attribute("pandaserve.completion_tokens", event.completion_tokens)
                        span.set_attribute("pandaserve.finish_reason", event.finish_reason)
                    yield event
        finally:
            if not completed:
                self.metrics.aborted.inc()
                span.set_attribute("pandaserve.finish_reason", "aborted")
            span.end()

    async def _stream(
        self, prompt: torch.Tensor, sampling: Sampling, request: SamplingRequest, started: float
    ) -> AsyncGenerator[TurnEvent, None]:
        """Stream the reply, releasing text as soon as it is final.

        PandaGPT's stop rule drops the `##` that ends a turn AND the token before it (the "\\n"), so
        the newest token is held back until the next one shows it is not followed by `##`. Text
        is held back too while it ends in an incomplete UTF-8 sequence, or could still be the
        start of a requested stop string.
        """
        stop_ids, eos = set(sampling.stop_token_ids), self.prompts.eos_id
        reply = _Reply()
        held: tuple[int, TokenLogprob | None] | None = None
        generated, finish_reason, stopped_text = 0, "length", None
        first_at = last_at = started
        # aclosing: leaving the loop early closes the engine's stream at once, which aborts the request.
        async with aclosing(self._engine_deltas(prompt, sampling)) as deltas:
            async for delta in deltas:
                first_at, last_at = self._observe_timing(delta.token_ids, generated, started, first_at, last_at)
                no_logprobs: list[TokenLogprob | None] = [None] * len(delta.token_ids)
                logprobs = delta.logprobs or no_logprobs
                for token, logprob in zip(delta.token_ids, logprobs, strict=True):
                    generated += 1
                    if token in stop_ids or token == eos:
                        # `##` also drops the held token; EOS drops only itself.
                        held = None if token in stop_ids else held
                        finish_reason = "stop"
                        break
                    if held is not None:
                        self._release(reply, held)
                    held = (token, logprob)
                if finish_reason == "stop":
                    break
                stopped_text, event = self._text_delta(reply, request.stop)
                if event is not None:
                    yield event
                if stopped_text is not None:
                    finish_reason = "stop"
                    break  # a stop string: leaving the engine's stream aborts the request
        if held is not None and stopped_text is None:
            self._release(reply, held)

        text = stopped_text if stopped_text is not None else self.prompts.decode(reply.ids)
        if len(text) > len(reply.sent_text) or reply.sent_tokens < len(reply.ids):
            yield TextDelta(
                text[len(reply.sent_text) :],
                reply.ids[reply.sent_tokens :],
                reply.logprobs[reply.sent_tokens :] if request.logprobs is not None else None,
            )
        self.metrics.prompt_tokens.inc(len(prompt))
        self.metrics.generation_tokens.inc(generated)
        self.metrics.e2e_latency.observe(last_at - started)
        if generated > 1:
            self.metrics.time_per_output_token.observe((last_at - first_at) / (generated - 1))
        yield TurnResult(
            None,
            text,
            finish_reason,
            len(prompt),
            generated,
            reply.ids,
            reply.logprobs if request.logprobs is not None else None,
        )

    async def _engine_deltas(self, prompt: torch.Tensor, sampling: Sampling) -> AsyncGenerator[Delta, None]:
        """The engine's deltas for this prompt, within the engine's admission bounds (a refusal
        raises before the turn's first event, so it is a plain 503)."""
        self.admission.enter(len(prompt))
        prefilled = False
        try:
            async with aclosing(self.engine.generate(uuid.uuid4().hex, prompt, sampling)) as deltas:
                async for delta in deltas:
                    if not prefilled:
                        prefilled = True
                        self.admission.prefilled(len(prompt))
                    if delta.queued_s is not None:
                        self.metrics.queue_time.labels("engine").observe(delta.queued_s)
                    yield delta
        finally:
            self.admission.leave(len(prompt), prefilled)

    def _observe_timing(
        self, tokens: list[int], generated: int, started: float, first_at: float, last_at: float
    ) -> tuple[float, float]:
        """TTFT on the first delta; inter-token latency spread over the tokens of every later one."""
        now = time.perf_counter()
        if generated == 0:
            self.metrics.time_to_first_token.observe(now - started)
            return now, now
        for _ in tokens:
            self.metrics.inter_token_latency.observe((now - last_at) / max(len(tokens), 1))
        return first_at, now

    @staticmethod
    def _release(reply: _Reply, token: tuple[int, TokenLogprob | None]) -> None:
        reply.ids.append(token[0])
        if token[1] is not None:
            reply.logprobs.append(token[1])

    def _text_delta(self, reply: _Reply, stop: tuple[str, ...]) -> tuple[str | None, TextDelta | None]:
        """(the reply text cut at a stop string, if one appeared; the text that is final now, if any)."""
        text = self.prompts.decode(reply.ids)
        hits = [i for i in (text.find(s, max(len(reply.sent_text) - len(s) + 1, 0)) for s in stop) if i >= 0]
        if hits:
            return text[: min(hits)], None
        safe = len(text) - max((len(s) - 1 for s in stop), default=0)
        if text.endswith(REPLACEMENT) or not text.startswith(reply.sent_text) or safe <= len(reply.sent_text):
            return None, None
        delta = TextDelta(
            text[len(reply.sent_text) : safe],
            reply.ids[reply.sent_tokens :],
            reply.logprobs[reply.sent_tokens :] or None,
        )
        reply.sent_text, reply.sent_tokens = text[:safe], len(reply.ids)
        return None, delta

    async def _load(self, owner: str | None, session_id: str) -> Session:
        session = await self.store.get(session_id)
        # Another tenant's session is "not found", not "forbidden": its existence must not leak.
        if session is None or session.owner != owner:
            raise NotFound(f"session {session_id!r} does not exist or has expired", param="session_id")
        return session

    async def get_session(self, owner: str | None, session_id: str) -> Session:
        return await self._load(owner, session_id)

    async def create_session(self, owner: str | None, metadata: dict[str, str]) -> Session:
        session = Session.new(owner, metadata)
        await self.store.commit(session, expected_turns=0)
        return session

    async def delete_session(self, owner: str | None, session_id: str) -> None:
        await self._load(owner, session_id)
        await self.store.delete(session_id)
