"""One exception tree for churnwatch, mapped to HTTP in one handler, and request ids.

Every error body has the same shape::

    {"error": {"code": "not_found", "message": "...", "details": ..., "request_id": "..."}}

Every response, error or not, carries an ``X-Request-ID`` header: the caller's
own id if it sent a sane one, else a new UUID. The same id is in the error body
and in every log line written while the request is served, so a caller's bug
report can be matched to the logs.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.logging import REQUEST_ID

log = logging.getLogger(__name__)

API_MAX_BODY_BYTES = 1024 * 1024
"""Largest request body the APIs read (ingest has its own, larger, INGEST_MAX_BODY_BYTES)."""

REQUEST_ID_HEADER = "X-Request-ID"
"""Request and response header that carries the request id."""

# What we accept from a caller as its request id: short, and only characters that
# cannot break a log line or a header (a UUID, a trace id, "batch-42:7", ...).
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


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


class ErrorDetail(BaseModel):
    """What went wrong: a stable code, a sentence, and details that depend on the code."""

    code: str = Field(description="Stable, e.g. not_found, conflict, validation_error.")
    message: str = Field(description="For people; do not parse it.")
    details: Any = Field(
        default=None,
        description="Null, or a JSON value that depends on the code "
        '(validation_error: a list of {"loc", "msg", "type"}).',
    )
    request_id: str | None = Field(
        default=None, description="The request's id, as in the X-Request-ID response header."
    )


class ErrorBody(BaseModel):
    """The one error body of every churnwatch API."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for routes that answer these error statuses with ``ErrorBody``."""
    meaning = {
        400: "Malformed request (e.g. a bad cursor).",
        401: "No API key, or one that is unknown, revoked or malformed.",
        403: "The API key lacks the scope this route needs.",
        404: "No such resource.",
        409: "The resource's state does not allow this.",
        413: "Body or batch over its limit.",
        415: "Content type not accepted.",
        422: "Invalid parameters or body; details lists each problem.",
        500: "Unexpected error (logged with the request id).",
        503: "A dependency is unavailable; retry after Retry-After.",
    }
    return {
        status: {"model": ErrorBody, "description": meaning.get(status, "Error.")}
        for status in statuses
    }


def current_request_id() -> str | None:
    """The id of the request being served in this context, if any."""
    return REQUEST_ID.get()


def error_body(
    code: str, message: str, details: Any = None, *, request_id: str | None = None
) -> dict[str, Any]:
    """The one error body shape; ``request_id`` defaults to the current request's."""
    return {
        "error": {
            "code": code,
            "message": message,
            "details": details,
            "request_id": request_id if request_id is not None else current_request_id(),
        }
    }


def _json_safe(value: Any) -> Any:
    """``value`` made fit for a UTF-8 JSON body.

    A lone surrogate (valid in a JSON string, not in UTF-8), e.g. in the key of
    a rejected object, would make rendering the error body fail.
    """
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _request_id_from(headers: Headers) -> str:
    """The caller's request id if it is sane, else a new one."""
    given = headers.get(REQUEST_ID_HEADER)
    if given is not None and _SANE_REQUEST_ID.match(given):
        return given
    return str(uuid.uuid4())


def _unexpected_response(exc: BaseException) -> JSONResponse:
    """The answer to an exception nothing else handled: 503 for a lost dependency, else 500."""
    # The client gets the one body shape and no internals. A lost database or
    # broker connection is a 503 (retry), not a 500 (our bug).
    if isinstance(exc, (OperationalError, InterfaceError, ConnectionError, TimeoutError)):
        return JSONResponse(
            error_body("service_unavailable", "a dependency is unavailable; retry later"),
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse(error_body("internal_error", "internal error"), status_code=500)


class RequestIdMiddleware:
    """Gives every HTTP request an id, and turns an unhandled exception into the error body.

    A pure ASGI middleware (not ``BaseHTTPMiddleware``), so the endpoint and the
    exception handlers run in the context where the id is set. It also answers
    unhandled exceptions itself: Starlette's outermost error middleware would
    answer them outside this one, without the request id header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI call; only ``http`` calls get an id."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id_from(Headers(scope=scope))
        scope.setdefault("state", {})["request_id"] = request_id
        token = REQUEST_ID.set(request_id)
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if started:
                raise  # too late for an error body; the server closes the connection
            # Not the path: it may hold a subscriber id. The request id ties it together.
            log.exception("unhandled error serving a %s request", scope.get("method"))
            await _unexpected_response(exc)(scope, receive, send_with_id)
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
            await JSONResponse(self._body(), status_code=413)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise StarletteHTTPException(413, self._body()["error"]["message"])
            return message

        await self.app(scope, counted, send)

    def _body(self) -> dict[str, Any]:
        return error_body(
            "payload_too_large",
            f"body over {self.limit} bytes",
            {"limit": self.limit},
        )


def install_error_handlers(
    app: FastAPI, *, max_body_bytes: int | None = API_MAX_BODY_BYTES
) -> None:
    """Request ids, a body limit, and errors of every kind mapped to one body.

    ``max_body_bytes=None`` leaves bodies to the app (ingest streams and limits its own).
    """
    if max_body_bytes is not None:
        # Added first, so it runs inside RequestIdMiddleware: its 413 has the request id.
        app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    app.add_middleware(RequestIdMiddleware)

    async def _churnwatch(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ChurnwatchError)
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def _http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {
            400: "bad_request",
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }
        return JSONResponse(
            error_body(code.get(exc.status_code, "http_error"), str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [
            {
                "loc": [_json_safe(part) for part in e.get("loc", ())],
                "msg": _json_safe(e.get("msg")),
                "type": e.get("type"),
            }
            for e in exc.errors()
        ]
        return JSONResponse(
            error_body("validation_error", "request is invalid", details), status_code=422
        )

    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Normally RequestIdMiddleware answers these first; this covers an
        # exception raised outside it (in a middleware added after it).
        return _unexpected_response(exc)

    app.add_exception_handler(ChurnwatchError, _churnwatch)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
