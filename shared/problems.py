"""RFC 9457 problem details: the one error body of every churnwatch API, and its OpenAPI.

Every error answer is ``application/problem+json``::

    {
      "type": "https://churnwatch.dev/problems/not-found",
      "title": "Not found",
      "status": 404,
      "detail": "no score for this subscriber",
      "instance": "/v1/subscribers/S-1/risk",
      "code": "not_found",
      "request_id": "3f0c2b8e-5f7a-4d1e-9a6b-2c1d0e9f8a7b"
    }

``type`` is stable per kind of error (``PROBLEM_TYPES``, one per ``code``;
docs/problems.md documents each), ``title`` is that kind's fixed summary,
``detail`` says what happened this time. The extension members keep what
callers had before RFC 9457: ``code`` (the stable code string),
``request_id`` (as in the ``X-Request-ID`` header), ``details`` (a JSON value
that depends on the code, left out when there is none) and, for
``validation_error`` only, ``errors`` (each invalid place).

``document_problems`` makes an app's OpenAPI document say so: every 4xx/5xx
response a route declares is the ``Problem`` schema as ``application/problem+json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import quote

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import Scope

PROBLEM_MEDIA_TYPE = "application/problem+json"
"""The media type of every error body (RFC 9457 section 3)."""

PROBLEM_TYPE_BASE = "https://churnwatch.dev/problems/"
"""Every churnwatch problem type is this plus the kind's slug (docs/problems.md).

The URIs identify the kinds; clients compare them as strings and need not
fetch them (RFC 9457 section 3.1.1). docs/problems.md is what to publish there.
"""

_REF = "#/components/schemas/"


@dataclass(frozen=True)
class ProblemType:
    """One kind of error: its code, the status it answers with, and a fixed title."""

    code: str
    status: int
    title: str

    @property
    def slug(self) -> str:
        """The last segment of the type URI (the code with dashes)."""
        return self.code.replace("_", "-")

    @property
    def uri(self) -> str:
        """The problem type URI (the body's ``type``)."""
        return PROBLEM_TYPE_BASE + self.slug


PROBLEM_TYPES: Mapping[str, ProblemType] = {
    t.code: t
    for t in (
        ProblemType("bad_request", 400, "Bad request"),
        ProblemType("unauthorized", 401, "Unauthorized"),
        ProblemType("forbidden", 403, "Forbidden"),
        ProblemType("not_found", 404, "Not found"),
        ProblemType("method_not_allowed", 405, "Method not allowed"),
        ProblemType("conflict", 409, "Conflict"),
        ProblemType("payload_too_large", 413, "Payload too large"),
        ProblemType("unsupported_media_type", 415, "Unsupported media type"),
        ProblemType("unprocessable_entity", 422, "Unprocessable content"),
        ProblemType("validation_error", 422, "Validation error"),
        ProblemType("internal_error", 500, "Internal error"),
        ProblemType("service_unavailable", 503, "Service unavailable"),
    )
}
"""Every kind of error churnwatch answers with, by code (docs/problems.md lists the same)."""

GENERIC_CODE = "http_error"
"""The code of an HTTP error of the framework no kind above covers (type ``about:blank``)."""


class ValidationProblem(BaseModel):
    """One invalid place of a request."""

    loc: list[str | int] = Field(
        description='Where: e.g. ["query", "limit"], ["body", "agent_id"], ["path", "task_id"].'
    )
    msg: str = Field(description="What is wrong, for people.")
    type: str = Field(description="Stable kind of the failure, e.g. missing, int_parsing.")


class Problem(BaseModel):
    """The one error body of every churnwatch API (RFC 9457 problem details)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="The kind of error, stable: https://churnwatch.dev/problems/<kind> "
        "(docs/problems.md), or about:blank for a plain HTTP error.",
        examples=["https://churnwatch.dev/problems/not-found"],
    )
    title: str = Field(description="The kind's short summary; the same for every occurrence.")
    status: int = Field(description="The HTTP status code of this answer.")
    detail: str = Field(description="What went wrong this time, for people; do not parse it.")
    instance: str | None = Field(default=None, description="The request's path.")
    code: str = Field(description="Stable code of the kind, e.g. not_found, validation_error.")
    request_id: str | None = Field(
        default=None, description="The request's id, as in the X-Request-ID response header."
    )
    details: Any = Field(
        default=None,
        description="Present when there is more to say: a JSON value that depends on the code "
        "(e.g. forbidden: required_scope; payload_too_large: limit).",
    )
    errors: list[ValidationProblem] | None = Field(
        default=None, description="validation_error only: each invalid place of the request."
    )


class ProblemResponse(JSONResponse):
    """A JSON response served as ``application/problem+json``."""

    media_type = PROBLEM_MEDIA_TYPE


def problem_type(code: str, status: int) -> tuple[str, str]:
    """``(type URI, title)`` of an error with this code and status."""
    known = PROBLEM_TYPES.get(code)
    if known is not None:
        return known.uri, known.title
    if code == GENERIC_CODE:
        return "about:blank", _phrase(status)
    # A code of a newer ChurnwatchError not listed yet still gets a stable type.
    return PROBLEM_TYPE_BASE + code.replace("_", "-"), _phrase(status)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def instance_of(scope: Scope) -> str:
    """The request's path as a URI reference (the body's ``instance``)."""
    return quote(scope.get("root_path", "") + scope.get("path", ""), safe="/:@!$&'()*+,;=-._~")


def problem_body(
    *,
    code: str,
    status: int,
    detail: str,
    instance: str | None,
    request_id: str | None,
    details: Any = None,
    errors: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The problem details object (``details``/``errors`` only when given)."""
    type_uri, title = problem_type(code, status)
    body: dict[str, Any] = {
        "type": type_uri,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
        "request_id": request_id,
    }
    if details is not None:
        body["details"] = details
    if errors is not None:
        body["errors"] = errors
    return body


_MEANING = {
    400: "Malformed request (e.g. a bad cursor, a body that is not JSON).",
    401: "No API key, or one that is unknown, revoked or malformed.",
    403: "The API key lacks the scope this route needs.",
    404: "No such resource.",
    409: "The resource's state does not allow this.",
    413: "Body or batch over its limit.",
    415: "Content type not accepted.",
    422: "Invalid parameters or body; errors lists each problem.",
    503: "A dependency (the database, the broker) is unavailable; retry after Retry-After.",
}


def error_responses(
    *statuses: int, described: Mapping[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for a route's error statuses, each a ``Problem``.

    ``described`` gives a status a route's own description (and adds it).
    ``document_problems`` turns the media type into ``application/problem+json``.
    """
    meaning = {**{s: _MEANING.get(s, "Error.") for s in statuses}, **(described or {})}
    return {s: {"model": Problem, "description": text} for s, text in sorted(meaning.items())}


def document_problems(doc: dict[str, Any]) -> dict[str, Any]:
    """Make an OpenAPI document say ``application/problem+json`` for every error; in place.

    Every 4xx/5xx response becomes the ``Problem`` schema in that media type.
    FastAPI's own 422 (``HTTPValidationError``, added to any route with
    parameters, whether or not they can be invalid) is dropped: a route
    documents its 422 itself where a request can fail validation.
    """
    for path_item in doc.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            responses = operation.get("responses", {})
            for status in list(responses):
                if not status.startswith(("4", "5")):
                    continue
                content = responses[status].get("content", {})
                schema = content.get("application/json", {}).get("schema", {})
                if schema.get("$ref") == _REF + "HTTPValidationError":
                    del responses[status]
                    continue
                responses[status]["content"] = {
                    PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _REF + "Problem"}}
                }
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    problem = Problem.model_json_schema(ref_template=_REF + "{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["Problem"] = problem
    return doc
