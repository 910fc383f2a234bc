"""Bounds on the work waiting for the engine: turns in flight, and prompt tokens not yet prefilled
(a long line of prefills is what makes time to first token grow). Beyond them a turn is refused at
once (Overloaded -> 503 + Retry-After) instead of waiting without bound."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import Overloaded


class Ticket:
    """One admitted turn: its prompt tokens count as queued until the engine's first output."""

    def __init__(self, admission: EngineAdmission, prompt_tokens: int) -> None:
        self._admission = admission
        self._queued = prompt_tokens

    def prefilled(self) -> None:
        self._admission.queued_prompt_tokens -= self._queued
        self._queued = 0


class EngineAdmission:
    def __init__(self, max_requests: int, max_queued_prompt_tokens: int) -> None:
        self.max_requests = max_requests
        self.max_queued_prompt_tokens = max_queued_prompt_tokens
        self.requests = 0
        self.queued_prompt_tokens = 0

    @contextmanager
    def admit(self, prompt_tokens: int) -> Iterator[Ticket]:
        """Holds a place for the turn until it leaves, however it leaves."""
        # A prompt longer than the token bound still goes in alone: otherwise it could never run.
        queued = self.queued_prompt_tokens
        if self.requests >= self.max_requests or (queued and queued + prompt_tokens > self.max_queued_prompt_tokens):
            raise Overloaded(
                f"the engine is at capacity ({self.requests} turns in flight, {queued} prompt tokens queued); "
                "retry shortly"
            )
        self.requests += 1
        self.queued_prompt_tokens += prompt_tokens
        ticket = Ticket(self, prompt_tokens)
        try:
            yield ticket
        finally:
            ticket.prefilled()
            self.requests -= 1
