"""Bounds on the work waiting for the engine: turns in flight, and prompt tokens not yet prefilled
(a long line of prefills is what makes time to first token grow). Beyond them a turn is refused at
once (Overloaded -> 503 + Retry-After) instead of waiting without bound. No tenant may hold more
than its share of either, so one API key cannot fill the engine's queue for every other.

In process: each replica bounds what it sends (the engine behind a router is shared, and a replica
cannot see the others' queues; the engine's own `max_num_seqs` bounds the rest).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import Overloaded


class Ticket:
    """One admitted turn: its prompt tokens count as queued until the engine's first output."""

    def __init__(self, admission: EngineAdmission, tenant: str | None, prompt_tokens: int) -> None:
        self._admission = admission
        self._tenant = tenant
        self._queued = prompt_tokens

    def prefilled(self) -> None:
        self._admission.queued_prompt_tokens -= self._queued
        if self._tenant is not None:
            self._admission.tokens_by[self._tenant] -= self._queued
        self._queued = 0


class EngineAdmission:
    def __init__(self, max_requests: int, max_queued_prompt_tokens: int, tenant_share: float = 1.0) -> None:
        self.max_requests = max_requests
        self.max_queued_prompt_tokens = max_queued_prompt_tokens
        self.tenant_requests = max(1, int(max_requests * tenant_share))
        self.tenant_tokens = max(1, int(max_queued_prompt_tokens * tenant_share))
        self.requests = 0
        self.queued_prompt_tokens = 0
        self.requests_by: Counter[str] = Counter()  # per tenant (None, auth off: only the totals)
        self.tokens_by: Counter[str] = Counter()

    def _refuse(self, tenant: str | None, prompt_tokens: int) -> None:
        # A prompt longer than the token bound still goes in alone: otherwise it could never run.
        queued = self.queued_prompt_tokens
        if self.requests >= self.max_requests or (queued and queued + prompt_tokens > self.max_queued_prompt_tokens):
            raise Overloaded(
                f"the engine is at capacity ({self.requests} turns in flight, {queued} prompt tokens queued); "
                "retry shortly"
            )
        if tenant is None:
            return
        mine = self.tokens_by[tenant]
        if self.requests_by[tenant] >= self.tenant_requests or (mine and mine + prompt_tokens > self.tenant_tokens):
            raise Overloaded(
                f"this API key's share of the engine is in use ({self.requests_by[tenant]} turns in flight, "
                f"{mine} prompt tokens queued); retry shortly"
            )

    @contextmanager
    def admit(self, tenant: str | None, prompt_tokens: int) -> Iterator[Ticket]:
        """Holds a place for the turn until it leaves, however it leaves."""
        self._refuse(tenant, prompt_tokens)
        self.requests += 1
        self.queued_prompt_tokens += prompt_tokens
        if tenant is not None:
            self.requests_by[tenant] += 1
            self.tokens_by[tenant] += prompt_tokens
        ticket = Ticket(self, tenant, prompt_tokens)
        try:
            yield ticket
        finally:
            ticket.prefilled()
            self.requests -= 1
            if tenant is not None:
                self.requests_by[tenant] -= 1
                if not self.requests_by[tenant]:  # forget tenants with nothing in flight
                    del self.requests_by[tenant], self.tokens_by[tenant]
