"""The service's domain exceptions. Raised by the chat core, the engines and the stores; they know
nothing of HTTP: the edge (service/api/error_handlers.py) maps each to a status in one table."""

from __future__ import annotations


class ServiceError(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequest(ServiceError):
    """Parameters that are well-formed but unusable (e.g. max_tokens beyond the context)."""


class Unauthorized(ServiceError):
    """No API key, or an unknown one."""


class NotFound(ServiceError):
    pass


class Conflict(ServiceError):
    """Another turn of the session runs, or committed first."""


class ClientGone(ServiceError):
    """The client closed its connection before its (not streamed) answer was ready: the turn was
    abandoned, as a streamed one is, and nothing committed."""


class Unprocessable(ServiceError):
    """Valid request shape, but the content cannot be served (e.g. a first turn without media)."""


class TooManyRequests(ServiceError):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(ServiceError):
    pass


class Overloaded(ServiceError):
    """The engine's admission bounds (requests in flight, queued prompt tokens) are reached."""

    retry_after_s = 1


class StoreUnavailable(NotReady):
    """Redis (sessions, rate limits) cannot be reached; the client retries, the service reconnects by itself."""


class EncoderUnavailable(NotReady):
    """The encoder service cannot be reached or failed; the service recovers when it is back."""


class EngineFailed(ServiceError):
    """The inference engine died or rejected the request."""
