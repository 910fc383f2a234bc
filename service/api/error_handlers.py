"""One error envelope, one exception-to-status table, at the edge.

Domain code raises typed exceptions (service.errors, encoders.errors); the handlers below turn them
into `{"error": {"type", "message", "param"}}` with the status from TABLE.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from encoders.errors import (
    DecoderLost,
    DecodersRebuilding,
    InvalidMedia,
    MediaError,
    MediaTooLarge,
    PoolFull,
    UnsupportedMediaType,
)
from service.errors import (
    BadRequest,
    ClientGone,
    Conflict,
    EngineFailed,
    NotFound,
    NotReady,
    Overloaded,
    ServiceError,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
)

log = logging.getLogger(__name__)

# exception class -> (HTTP status, error type). Order matters: first isinstance match wins.
TABLE: list[tuple[type[Exception], int, str]] = [
    (BadRequest, 400, "invalid_request_error"),
    (Unauthorized, 401, "authentication_error"),
    (NotFound, 404, "not_found_error"),
    (Conflict, 409, "conflict_error"),
    (ClientGone, 499, "client_closed_request"),  # nginx's code: nobody reads it, the access log does
    (Unprocessable, 422, "unprocessable_entity_error"),
    (MediaTooLarge, 413, "payload_too_large_error"),  # MediaTooCostly too: over a decode's cost bound
    (UnsupportedMediaType, 415, "unsupported_media_type_error"),
    (InvalidMedia, 422, "invalid_media_error"),
    (TooManyRequests, 429, "rate_limit_error"),
    (NotReady, 503, "service_unavailable_error"),
    (Overloaded, 503, "overloaded_error"),
    (PoolFull, 503, "overloaded_error"),
    (DecoderLost, 503, "service_unavailable_error"),  # names the file: its decode worker died
    (DecodersRebuilding, 503, "service_unavailable_error"),
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


def error_body(exc: Exception) -> tuple[int, dict]:
    """(status, envelope) of an exception; every 5xx is logged (the JSON line carries the request id).
    An unexpected error (500) is logged with its traceback and shows the client nothing of its cause;
    a known one (503) says what is unavailable."""
    status, kind = status_of(exc)
    if status == 500:
        log.error("request failed", exc_info=exc)
        return status, envelope(kind, "internal server error")
    if status > 500:
        # The cause too (e.g. which Redis error): a 503's message stays generic for the client.
        cause = f" ({exc.__cause__!r})" if exc.__cause__ is not None else ""
        log.warning("request refused: %s: %s%s", kind, exc, cause)
    return status, envelope(kind, str(exc), _param_of(exc))


def error_response(exc: Exception) -> JSONResponse:
    status, body = error_body(exc)
    headers = {}
    if isinstance(exc, TooManyRequests | Overloaded | PoolFull | DecoderLost | DecodersRebuilding):
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers)


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
    app.add_exception_handler(DecodersRebuilding, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
