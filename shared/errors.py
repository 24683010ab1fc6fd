"""One exception tree for churnwatch, mapped to HTTP in one handler, and request ids.

Every error answer of every service is RFC 9457 problem details, served as
``application/problem+json`` (``shared.problems`` has the body and its OpenAPI)::

    {"type": "https://churnwatch.dev/problems/not-found", "title": "Not found",
     "status": 404, "detail": "...", "instance": "/v1/...", "code": "not_found",
     "request_id": "..."}

Errors raised on purpose (``ChurnwatchError`` and its subclasses), the
framework's (an unknown path, a wrong method, invalid parameters), a body over
its limit and anything unexpected all get that body.

Every response, error or not, carries an ``X-Request-ID`` header: the caller's
own id if it sent a sane one, else a new UUID (asgi-correlation-id's middleware,
with our check of what is sane). The same id is in the error body and in every
log line written while the request is served, so a caller's bug report can be
matched to the logs.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from asgi_correlation_id import CorrelationIdMiddleware
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import REQUEST_ID
from shared.problems import (
    GENERIC_CODE,
    ProblemResponse,
    document_problems,
    error_responses,
    instance_of,
    problem_body,
)

__all__ = [
    "API_MAX_BODY_BYTES",
    "REQUEST_ID_HEADER",
    "BadRequest",
    "BodyLimitMiddleware",
    "ChurnwatchError",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "RequestIdMiddleware",
    "ServiceUnavailable",
    "Unauthorized",
    "UnprocessableEntity",
    "UnsupportedMediaType",
    "current_request_id",
    "error_responses",
    "install_error_handlers",
    "problem_response",
]

log = logging.getLogger(__name__)

API_MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the APIs read (ingest has its own, larger, INGEST_MAX_BODY_BYTES)."""

REQUEST_ID_HEADER = "X-Request-ID"
"""Request and response header that carries the request id."""

# What we accept from a caller as its request id: short, and only characters that
# cannot break a log line or a header (a UUID, a trace id, "batch-42:7", ...).
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

# The framework's HTTP errors, by status: the code of their kind (shared.problems).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


class ChurnwatchError(Exception):
    """Base of every error churnwatch raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(
        self, message: str, *, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class BadRequest(ChurnwatchError):
    """The request is malformed."""

    status_code = 400
    code = "bad_request"


class Unauthorized(ChurnwatchError):
    """Credentials or a signature are missing, wrong or too old."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ChurnwatchError):
    """The credentials are valid but do not grant this (an API key without the scope)."""

    status_code = 403
    code = "forbidden"


class NotFound(ChurnwatchError):
    """The resource does not exist."""

    status_code = 404
    code = "not_found"


class Conflict(ChurnwatchError):
    """The request conflicts with the resource's state."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(ChurnwatchError):
    """A body or batch exceeds a configured limit."""

    status_code = 413
    code = "payload_too_large"


class UnprocessableEntity(ChurnwatchError):
    """Well-formed, but nothing in it is valid."""

    status_code = 422
    code = "unprocessable_entity"


class UnsupportedMediaType(ChurnwatchError):
    """A content type the endpoint does not take."""

    status_code = 415
    code = "unsupported_media_type"


class ServiceUnavailable(ChurnwatchError):
    """A dependency (broker, database, gateway) is unavailable; retry later."""

    status_code = 503
    code = "service_unavailable"


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return REQUEST_ID.get()


def problem_response(
    scope: Scope,
    status: int,
    code: str,
    detail: str,
    *,
    details: Any = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemResponse:
    """The ``application/problem+json`` answer to the request of ``scope``."""
    body = problem_body(
        code=code,
        status=status,
        detail=detail,
        instance=instance_of(scope),
        request_id=current_request_id(),
        details=details,
        errors=errors,
    )
    return ProblemResponse(body, status_code=status, headers=headers)


def _json_safe(value: Any) -> Any:
    """``value`` made fit for a UTF-8 JSON body.

    A lone surrogate (valid in a JSON string, not in UTF-8), e.g. in the key of
    a rejected object, would make rendering the error body fail.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _is_sane_request_id(given: str) -> bool:
    """Whether a caller's request id may be kept (else a new one is made)."""
    return _SANE_REQUEST_ID.match(given) is not None


def _unexpected_response(scope: Scope, exc: BaseException) -> ProblemResponse:
    """The answer to an exception nothing else handled: 503 for a lost dependency, else 500."""
    # The client gets the problem body and no internals. A lost database or
    # broker connection is a 503 (retry), not a 500 (our bug).
    if isinstance(exc, (OperationalError, InterfaceError, ConnectionError, TimeoutError)):
        return problem_response(
            scope,
            503,
            "service_unavailable",
            "a dependency is unavailable; retry later",
            headers={"Retry-After": "5"},
        )
    return problem_response(scope, 500, "internal_error", "internal error")


class _AnswerUnhandled:
    """Turns an exception nothing handled into the problem body, inside the request id.

    Starlette's outermost error middleware would answer it outside the request
    id middleware, without the ``X-Request-ID`` header and without the id in
    the body; and it re-raises, so the server would log the error a second time.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if started:
                raise  # too late for an error body; the server closes the connection
            # Not the path: it may hold a subscriber id. The request id ties it together.
            log.exception("unhandled error serving a %s request", scope.get("method"))
            await _unexpected_response(scope, exc)(scope, receive, watched)


class RequestIdMiddleware:
    """Gives every HTTP request an id, and turns an unhandled exception into the error body.

    The id is asgi-correlation-id's ``CorrelationIdMiddleware`` (the caller's
    ``X-Request-ID`` if sane, else a new UUID; the header on every answer; the
    id in a context variable, ``shared.logging.REQUEST_ID``). Around it, the id
    is scoped to the request: the context variable is reset afterwards (an
    ASGI client in a test calls the app in its own task). Inside it,
    ``_AnswerUnhandled`` answers unhandled exceptions, so their answer carries
    the id too. Pure ASGI middlewares (not ``BaseHTTPMiddleware``), so the
    endpoint and the exception handlers run in the context where the id is set.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = CorrelationIdMiddleware(
            _AnswerUnhandled(app),
            header_name=REQUEST_ID_HEADER,
            update_request_header=True,
            generator=lambda: str(uuid.uuid4()),
            validator=_is_sane_request_id,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI call; an ``http`` call's id is forgotten after it."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = REQUEST_ID.set(None)
        try:
            await self.app(scope, receive, send)
        finally:
            REQUEST_ID.reset(token)


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes with a 413, before they fill memory.

    A declared ``Content-Length`` over the limit is answered at once; a chunked
    body is counted as the app reads it, and reading past the limit raises a 413
    ``HTTPException`` (FastAPI turns any other error while reading into a 400).
    """

    def __init__(self, app: ASGIApp, limit: int = API_MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI call; only ``http`` calls are limited."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            answer = problem_response(
                scope,
                413,
                "payload_too_large",
                self._message(),
                details={"limit": self.limit},
            )
            await answer(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"body over {self.limit} bytes"


def install_error_handlers(
    app: FastAPI, *, max_body_bytes: int | None = API_MAX_BODY_BYTES
) -> None:
    """Request ids, a body limit, errors of every kind as problem details, and their OpenAPI.

    ``max_body_bytes=None`` leaves bodies to the app (ingest streams and limits its own).
    The app's OpenAPI document describes every error response as
    ``application/problem+json`` (``shared.problems.document_problems``).
    """
    if max_body_bytes is not None:
        # Added first, so it runs inside RequestIdMiddleware: its 413 has the request id.
        app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    app.add_middleware(RequestIdMiddleware)

    async def _churnwatch(request: Request, exc: Exception) -> ProblemResponse:
        assert isinstance(exc, ChurnwatchError)
        return problem_response(
            request.scope,
            exc.status_code,
            exc.code,
            exc.message,
            details=exc.details,
            headers=exc.headers,
        )

    async def _http(request: Request, exc: Exception) -> ProblemResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(
            request.scope,
            exc.status_code,
            _HTTP_CODES.get(exc.status_code, GENERIC_CODE),
            str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    async def _validation(request: Request, exc: Exception) -> ProblemResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {
                "loc": [_json_safe(part) for part in e.get("loc", ())],
                "msg": _json_safe(e.get("msg")),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        return problem_response(
            request.scope, 422, "validation_error", "request is invalid", errors=errors
        )

    async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
        # Normally RequestIdMiddleware answers these first; this covers an
        # exception raised outside it (in a middleware added after it).
        return _unexpected_response(request.scope, exc)

    app.add_exception_handler(ChurnwatchError, _churnwatch)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_problems(FastAPI.openapi(app))
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
