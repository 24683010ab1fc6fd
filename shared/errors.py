"""One exception tree for churnwatch, mapped to HTTP in one handler.

Every error body has the same shape::

    {"error": {"code": "not_found", "message": "...", "details": ...}}
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException


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
    """A dependency (broker, database, gateway) is unreachable; retry later."""

    status_code = 503
    code = "service_unavailable"


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The one error body shape."""
    return {"error": {"code": code, "message": message, "details": details}}


def install_error_handlers(app: FastAPI) -> None:
    """Map the exception tree, HTTP errors and validation errors to the one body shape."""

    async def _churnwatch(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ChurnwatchError)
        return JSONResponse(
            error_body(exc.code, exc.message, exc.details),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def _http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
        return JSONResponse(
            error_body(code.get(exc.status_code, "http_error"), str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def _validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return JSONResponse(
            error_body("validation_error", "request is invalid", details), status_code=422
        )

    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # Starlette logs the traceback; the client gets the one body shape and no
        # internals. A lost database or broker connection is a 503, not a 500.
        if isinstance(exc, (OperationalError, InterfaceError, ConnectionError, TimeoutError)):
            return JSONResponse(
                error_body("service_unavailable", "a dependency is unavailable; retry later"),
                status_code=503,
                headers={"Retry-After": "5"},
            )
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)

    app.add_exception_handler(ChurnwatchError, _churnwatch)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(RequestValidationError, _validation)
