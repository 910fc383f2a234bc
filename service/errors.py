"""One error envelope, one exception-to-status table.

Domain code raises typed exceptions; the handlers below turn them into
`{"error": {"type", "message", "param"}}` with the status from TABLE.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from encoders.errors import InvalidMedia, MediaError, MediaTooLarge, PoolFull, UnsupportedMediaType

log = logging.getLogger(__name__)


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
    """The session changed under this turn (another turn committed first)."""


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


class EngineFailed(ServiceError):
    """The inference engine died or rejected the request."""


# exception class -> (HTTP status, error type). Order matters: first isinstance match wins.
TABLE: list[tuple[type[Exception], int, str]] = [
    (BadRequest, 400, "invalid_request_error"),
    (Unauthorized, 401, "authentication_error"),
    (NotFound, 404, "not_found_error"),
    (Conflict, 409, "conflict_error"),
    (Unprocessable, 422, "unprocessable_entity_error"),
    (MediaTooLarge, 413, "payload_too_large_error"),
    (UnsupportedMediaType, 415, "unsupported_media_type_error"),
    (InvalidMedia, 422, "invalid_media_error"),
    (TooManyRequests, 429, "rate_limit_error"),
    (NotReady, 503, "service_unavailable_error"),
    (Overloaded, 503, "overloaded_error"),
    (PoolFull, 503, "overloaded_error"),
    (EngineFailed, 503, "engine_error"),
]


def status_of(exc: Exception) -> tuple[int, str]:
    for cls, status, kind in TABLE:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal_error"


def envelope(kind: str, message: str, param: str | None = None) -> dict:
    return {"error": {"type": kind, "message": message, "param": param}}


def _param_of(exc: Exception) -> str | None:
    if isinstance(exc, MediaError):
        # An upload "image[1]" is the form field "image"; a JSON path ("messages[0].content[1]") stays whole.
        return exc.field if "." in exc.field else exc.field.split("[")[0]
    return getattr(exc, "param", None)


def error_response(exc: Exception) -> JSONResponse:
    status, kind = status_of(exc)
    headers = {}
    if isinstance(exc, TooManyRequests | Overloaded | PoolFull):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(envelope(kind, str(exc), _param_of(exc)), status_code=status, headers=headers)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0]
    # loc is ("body" | "query" | "path", field, ...): name the field, not the container.
    field = ".".join(str(p) for p in first["loc"][1:]) or str(first["loc"][0])
    return JSONResponse(envelope("invalid_request_error", f"{field}: {first['msg']}", field), status_code=422)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = "payload_too_large_error" if exc.status_code == 413 else "http_error"
    return JSONResponse(envelope(kind, str(exc.detail)), status_code=exc.status_code)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)  # the JSON line carries the id
    return JSONResponse(envelope("internal_error", "internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _domain_error)
    app.add_exception_handler(MediaError, _domain_error)
    app.add_exception_handler(PoolFull, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
