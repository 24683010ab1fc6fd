"""Every documented error of every service is provoked, and is RFC 9457 problem+json.

Each service app runs with ``AUTH_ENABLED=true`` on the session's broker and
PostgreSQL (ingest with its lifespan, for its producer; the others need none
for their routes). The test walks each app's OpenAPI document: every 4xx/5xx
response a route documents must be the ``Problem`` schema as
``application/problem+json``, and is then provoked for real: a missing or
wrong-scope key, a body over the limit, an invalid parameter or body, the
database gone (503), or a recipe of the route's own (``SPECIFIC``) for a 404,
409, 400 or 415. The answer must have the documented status, the content type
``application/problem+json``, and a problem body whose type, title, status,
instance and request id are right. A route that documents an error no probe
can provoke fails the test (add a recipe, or stop documenting it); so does an
error answered in another shape.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy.ext.asyncio import create_async_engine

from services.alerting.app import create_app as alerting_app
from services.alerting.settings import AlertingSettings
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.outreach.app import create_app as outreach_app
from services.outreach.policy import SIGNATURE_HEADER, sign
from services.outreach.settings import OutreachSettings
from services.outreach.views.contacts import MAX_WEBHOOK_BYTES
from services.scoring.app import create_app as scoring_app
from services.scoring.settings import ScoringSettings
from shared.auth import SCOPES, KeyStore, create_key, route_scope
from shared.db import create_engine
from shared.errors import (
    API_MAX_BODY_BYTES,
    ChurnwatchError,
    current_request_id,
    install_error_handlers,
)
from shared.problems import PROBLEM_MEDIA_TYPE, PROBLEM_TYPE_BASE, PROBLEM_TYPES, problem_type
from shared.settings import BaseServiceSettings
from tests.conftest import REPO, Stack
from tests.helpers import sid

session_loop = pytest.mark.asyncio(loop_scope="session")

INGEST_LIMIT = 4096
"""INGEST_MAX_BODY_BYTES in this test: its 413 needs no megabytes."""

PROBLEM_REF = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}

# A well-formed value for each path parameter, naming nothing that exists.
PATH_VALUES = {
    "task_id": lambda: str(uuid.uuid4()),
    "silence_id": lambda: str(uuid.uuid4()),
    "subscriber_id": lambda: f"S-problem-{uuid.uuid4().hex[:8]}",
    "queue": lambda: "general",
    "name": lambda: "no_such_schema",
}


def _url(path: str, **given: str) -> str:
    """The path with ``given`` values, else a well-formed made-up one, for each parameter."""
    return re.sub(
        r"\{(\w+)(:\w+)?\}",
        lambda m: given.get(m.group(1)) or PATH_VALUES[m.group(1)](),
        path,
    )


@dataclass
class Service:
    """One running app, its client, its OpenAPI document and the scope of each route."""

    name: str
    app: FastAPI
    client: httpx.AsyncClient
    keys: dict[str, str]
    doc: dict[str, Any] = field(default_factory=dict)
    scopes: dict[tuple[str, str], str | None] = field(default_factory=dict)

    def key(self, method: str, path: str, *, wrong: bool = False) -> dict[str, str]:
        """Headers with the route's own key (or one of another scope); none for a webhook."""
        scope = self.scopes[(method, path)]
        if scope is None:
            return {}
        if wrong:
            scope = next(s for s in SCOPES if s != scope)
        return {"Authorization": f"Bearer {self.keys[scope]}"}

    async def call(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        json: Any = None,
    ) -> httpx.Response:
        """One request with a fresh request id (checked against the answer's)."""
        all_headers = {"X-Request-ID": f"problem-{uuid.uuid4().hex[:12]}", **(headers or {})}
        if json is not None:
            content = orjson.dumps(json)
            all_headers.setdefault("content-type", "application/json")
        return await self.client.request(method, url, headers=all_headers, content=content)

    def signed(self, body: Any) -> tuple[dict[str, str], bytes]:
        """Headers and raw body of a webhook call signed with the receipt secret."""
        raw = orjson.dumps(body)
        secret = self.app.state.settings.sms_receipt_secret.get_secret_value()
        headers = {
            SIGNATURE_HEADER: sign(raw, secret, timestamp=int(time.time())),
            "content-type": "application/json",
        }
        return headers, raw


@dataclass(frozen=True)
class Op:
    """One documented operation."""

    method: str
    path: str
    operation: dict[str, Any]

    @property
    def has_body(self) -> bool:
        """Whether the route reads a body."""
        return "requestBody" in self.operation


Probe = Callable[[Service, Op], Awaitable[httpx.Response]]


# --- generic probes: the same way to provoke a status on any route --------------------------


async def _no_key(s: Service, op: Op) -> httpx.Response:
    content = b"{}" if op.method in ("POST", "PUT") else None
    return await s.call(op.method, _url(op.path), content=content)


async def _wrong_scope(s: Service, op: Op) -> httpx.Response:
    assert s.scopes[(op.method, op.path)] is not None, "no key, no 403"
    content = b"{}" if op.method in ("POST", "PUT") else None
    return await s.call(
        op.method, _url(op.path), headers=s.key(op.method, op.path, wrong=True), content=content
    )


async def _too_large(s: Service, op: Op) -> httpx.Response:
    assert op.has_body, "a route that reads no body has no body limit to document"
    limit = {"ingest": INGEST_LIMIT}.get(s.name, API_MAX_BODY_BYTES)
    if s.scopes[(op.method, op.path)] is None:  # a webhook reads its own, smaller, limit
        limit = MAX_WEBHOOK_BYTES
    return await s.call(
        op.method,
        _url(op.path),
        headers={**s.key(op.method, op.path), "content-type": "application/json"},
        content=b"[" + b" " * limit + b"]",
    )


async def _invalid(s: Service, op: Op) -> httpx.Response:
    """A body no model takes, else a malformed path parameter, else a malformed query one."""
    headers = s.key(op.method, op.path)
    if op.has_body:
        if s.scopes[(op.method, op.path)] is None:
            headers, raw = s.signed([1])
            return await s.call(op.method, _url(op.path), headers=headers, content=raw)
        return await s.call(op.method, _url(op.path), headers=headers, json=[1])
    params = op.operation.get("parameters", [])
    for param in params:
        schema = param.get("schema", {})
        if param["in"] == "path" and schema.get("format") == "uuid":
            url = _url(op.path, **{param["name"]: "not-a-uuid"})
            return await s.call(op.method, url, headers=headers)
        if param["in"] == "path" and "pattern" in schema:
            url = _url(op.path, **{param["name"]: "-not-an-id"})
            return await s.call(op.method, url, headers=headers)
    for param in params:
        schema = param.get("schema", {})
        kinds = [schema, *schema.get("anyOf", [])]  # an optional one is anyOf [it, null]
        if param["in"] == "query" and any(
            k.get("type") == "integer" or "pattern" in k for k in kinds
        ):
            # NUL: not an integer, and against every pattern of ours.
            url = f"{_url(op.path)}?{param['name']}=%00"
            return await s.call(op.method, url, headers=headers)
    raise AssertionError("nothing in this route can be invalid")


@contextmanager
def _database_down(s: Service) -> Iterator[None]:
    """The service's database (API keys included) on a port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = create_async_engine(f"postgresql+asyncpg://nobody:x@127.0.0.1:{port}/none")
    state = s.app.state
    runtime = getattr(state, "runtime", None)
    saved = (state.keystore, runtime.engine if runtime is not None else None)
    state.keystore = KeyStore(dead, ttl_s=0)
    if runtime is not None:
        runtime.engine = dead
    try:
        yield
    finally:
        state.keystore = saved[0]
        if runtime is not None:
            runtime.engine = saved[1]


async def _unavailable(s: Service, op: Op) -> httpx.Response:
    with _database_down(s):
        if s.scopes[(op.method, op.path)] is None:
            body = WEBHOOK_BODIES[op.path]
            headers, raw = s.signed(body)
            return await s.call(op.method, _url(op.path), headers=headers, content=raw)
        content = b"{}" if op.method in ("POST", "PUT") else None
        return await s.call(
            op.method, _url(op.path), headers=s.key(op.method, op.path), content=content
        )


async def _not_ready(s: Service, op: Op) -> httpx.Response:
    """The readiness probe with the service's database gone."""
    with _database_down(s):
        return await s.call(op.method, _url(op.path))


SERVICE_NAMES = ("ingest", "scoring", "alerting", "outreach")


async def _bad_cursor(s: Service, op: Op) -> httpx.Response:
    """A page cursor the service did not make (any paged listing's 400)."""
    names = {p["name"] for p in op.operation.get("parameters", []) if p["in"] == "query"}
    assert "cursor" in names, "no cursor here: give this route's 400 a recipe in SPECIFIC"
    url = f"{_url(op.path)}?cursor=not-a-cursor"
    return await s.call(op.method, url, headers=s.key(op.method, op.path))


GENERIC: dict[int, Probe] = {
    400: _bad_cursor,
    401: _no_key,
    403: _wrong_scope,
    413: _too_large,
    422: _invalid,
    503: _unavailable,
}

WEBHOOK_BODIES: dict[str, Any] = {
    "/v1/sms/receipts": {"message_id": "m-problem", "status": "delivered"},
    "/v1/sms/inbound": {"from": "+15550009876", "text": "T"},
}


# --- a route's own ways: its 400, 404, 409, 415 ---------------------------------------------


def _task_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "created_by": "problem-test",
        "kind": "retention",
        "channel": "call",
        "subscriber_id": sid(),
        "queue": f"am:AM-{uuid.uuid4().hex[:8]}",
        "due_at": (datetime.now(UTC) + timedelta(days=2)).isoformat(),
    }
    return body | fields


async def _new_task(s: Service, **fields: Any) -> str:
    """A task made through the API (``tasks:write``); its id."""
    made = await s.call(
        "POST",
        "/v1/tasks",
        headers={"Authorization": f"Bearer {s.keys['tasks:write']}", "Idempotency-Key": sid()},
        json=_task_body(**fields),
    )
    assert made.status_code == 201, made.text
    task_id: str = made.json()["task_id"]
    return task_id


def _get() -> Probe:
    """The route with made-up ids (its 404)."""

    async def probe(s: Service, op: Op) -> httpx.Response:
        return await s.call(op.method, _url(op.path), headers=s.key(op.method, op.path))

    return probe


def _send(body: Any, *, content_type: str = "application/json", raw: bytes | None = None) -> Probe:
    async def probe(s: Service, op: Op) -> httpx.Response:
        headers = {**s.key(op.method, op.path), "content-type": content_type}
        content = raw if raw is not None else orjson.dumps(body)
        return await s.call(op.method, _url(op.path), headers=headers, content=content)

    return probe


async def _key_reused(s: Service, op: Op) -> httpx.Response:
    key, body = sid(), _task_body()
    headers = {**s.key(op.method, op.path), "Idempotency-Key": key}
    first = await s.call("POST", "/v1/tasks", headers=headers, json=body)
    assert first.status_code == 201, first.text
    return await s.call("POST", "/v1/tasks", headers=headers, json=body | {"priority": 7})


async def _cancelled_twice(s: Service, op: Op) -> httpx.Response:
    url = _url(op.path, task_id=await _new_task(s))
    body = {"actor": "problem-test", "reason": "test"}
    first = await s.call("POST", url, headers=s.key(op.method, op.path), json=body)
    assert first.status_code == 200, first.text
    return await s.call("POST", url, headers=s.key(op.method, op.path), json=body)


def _on_unclaimed_call(body: dict[str, Any]) -> Probe:
    async def probe(s: Service, op: Op) -> httpx.Response:
        url = _url(op.path, task_id=await _new_task(s))
        return await s.call("POST", url, headers=s.key(op.method, op.path), json=body)

    return probe


def _signed(body: Any) -> Probe:
    async def probe(s: Service, op: Op) -> httpx.Response:
        headers, raw = s.signed(body)
        return await s.call(op.method, _url(op.path), headers=headers, content=raw)

    return probe


async def _receipt_for_unsent(s: Service, op: Op) -> httpx.Response:
    task_id = await _new_task(s, channel="sms", phone="+15550001111", queue=None)
    body = {"message_id": f"m-{uuid.uuid4().hex}", "reference": task_id, "status": "delivered"}
    return await _signed(body)(s, op)


AGENT = {"agent_id": "AM-problem"}
SPECIFIC: dict[tuple[str, str, str, int], Probe] = {
    ("ingest", "POST", "/v1/events", 400): _send(None, raw=b"{oops"),
    ("ingest", "POST", "/v1/events", 415): _send(None, content_type="text/plain", raw=b"hi"),
    ("ingest", "GET", "/v1/schemas/{name}", 404): _get(),
    ("scoring", "GET", "/v1/subscribers/{subscriber_id}/risk", 404): _get(),
    ("alerting", "GET", "/v1/subscribers/{subscriber_id}/activity", 404): _get(),
    ("alerting", "GET", "/v1/silences/{silence_id}", 404): _get(),
    ("alerting", "DELETE", "/v1/silences/{silence_id}", 404): _get(),
    ("alerting", "POST", "/v1/silences", 400): _send(
        {"rule": "no_such_rule", "duration_s": 60, "comment": "c", "created_by": "me"}
    ),
    ("outreach", "POST", "/v1/tasks", 409): _key_reused,
    ("outreach", "GET", "/v1/tasks/{task_id}", 404): _get(),
    ("outreach", "POST", "/v1/tasks/{task_id}/cancel", 404): _send(
        {"actor": "problem-test", "reason": "test"}
    ),
    ("outreach", "POST", "/v1/tasks/{task_id}/cancel", 409): _cancelled_twice,
    ("outreach", "POST", "/v1/tasks/{task_id}/start", 404): _send(AGENT),
    ("outreach", "POST", "/v1/tasks/{task_id}/start", 409): _on_unclaimed_call(AGENT),
    ("outreach", "POST", "/v1/tasks/{task_id}/outcome", 404): _send(
        AGENT | {"outcome": "not_interested"}
    ),
    ("outreach", "POST", "/v1/tasks/{task_id}/outcome", 409): _on_unclaimed_call(
        AGENT | {"outcome": "not_interested"}
    ),
    ("outreach", "POST", "/v1/sms/receipts", 404): _signed(WEBHOOK_BODIES["/v1/sms/receipts"]),
    ("outreach", "POST", "/v1/sms/receipts", 409): _receipt_for_unsent,
    **{(name, "GET", "/readyz", 503): _not_ready for name in SERVICE_NAMES},
}


# --- the apps ---------------------------------------------------------------------------------


@pytest.fixture
async def services(stack: Stack, env: dict[str, Any]) -> AsyncIterator[list[Service]]:
    """The four apps with API keys on, a key per scope, and a client on each."""
    keys: dict[str, str] = {}
    engine = create_engine(BaseServiceSettings(database_url=stack.database_url))
    async with engine.begin() as conn:
        for scope in SCOPES:
            _, keys[scope] = await create_key(
                conn, name=f"problem-{scope}", scopes=[scope], now=datetime.now(UTC)
            )
    await engine.dispose()
    settings = {**env, "auth_enabled": True, "auth_cache_ttl_s": 0}
    apps = {
        "ingest": ingest_app(IngestSettings(**settings, ingest_max_body_bytes=INGEST_LIMIT)),
        "scoring": scoring_app(ScoringSettings(**settings)),
        "alerting": alerting_app(AlertingSettings(**settings)),
        "outreach": outreach_app(OutreachSettings(**settings)),
    }
    async with AsyncExitStack() as stack_:
        # Ingest's routes need its producer (the lifespan); the others' need only
        # what create_app made, and outreach's dispatcher must not send anything.
        await stack_.enter_async_context(apps["ingest"].router.lifespan_context(apps["ingest"]))
        found = []
        for name, app in apps.items():
            client = await stack_.enter_async_context(
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{name}")
            )
            service = Service(name, app, client, keys)
            service.doc = (await client.get("/openapi.json")).json()
            for context in iter_route_contexts(app.routes):
                dependant = getattr(context, "dependant", None)
                scope = route_scope(dependant.dependencies) if dependant is not None else None
                path = re.sub(r"\{(\w+):\w+\}", r"{\1}", context.path)  # as OpenAPI has it
                for method in context.methods or ():
                    service.scopes[(method, path)] = scope
            found.append(service)
            if name != "ingest":  # ingest's lifespan disposes of its own
                stack_.push_async_callback(app.state.runtime.engine.dispose)
        yield found


def _documented_errors(doc: dict[str, Any]) -> Iterator[tuple[Op, int, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    yield Op(method.upper(), path, operation), int(status), response


def _check_problem(response: httpx.Response, status: int, where: str) -> dict[str, Any]:
    """The answer is a problem+json body of ``status`` for this very request."""
    assert response.status_code == status, f"{where}: {response.status_code} {response.text}"
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE, where
    body: dict[str, Any] = response.json()
    assert isinstance(body["code"], str) and isinstance(body["detail"], str), (where, body)
    assert (body["type"], body["title"]) == problem_type(body["code"], status), (where, body)
    if body["code"] in PROBLEM_TYPES:
        assert PROBLEM_TYPES[body["code"]].status == status, (where, body)
        assert body["type"].startswith(PROBLEM_TYPE_BASE), (where, body)
    assert body["status"] == status, (where, body)
    assert body["request_id"] == response.request.headers["x-request-id"], where
    assert body["request_id"] == response.headers["x-request-id"], where
    assert body["instance"] == response.request.url.raw_path.decode().split("?")[0], where
    assert ("errors" in body) == (body["code"] == "validation_error"), (where, body)
    return body


@session_loop
async def test_every_documented_error_is_provoked_and_is_problem_json(
    services: list[Service],
) -> None:
    provoked: set[tuple[str, str, str, int]] = set()
    for s in services:
        for op, status, response in _documented_errors(s.doc):
            where = f"{s.name} {op.method} {op.path} {status}"
            assert response.get("content") == PROBLEM_REF, f"{where}: {response}"
            probe = SPECIFIC.get((s.name, op.method, op.path, status)) or GENERIC.get(status)
            assert probe is not None, f"{where} is documented, but nothing here provokes it"
            try:
                answer = await probe(s, op)
            except AssertionError as exc:
                raise AssertionError(f"{where}: {exc}") from exc
            _check_problem(answer, status, where)
            provoked.add((s.name, op.method, op.path, status))
    # Every recipe was for a documented error (a stale one means the docs lost one).
    assert set(SPECIFIC) <= provoked, set(SPECIFIC) - provoked
    # Scoring's and alerting's 404s are documented (and, above, provoked).
    assert ("scoring", "GET", "/v1/subscribers/{subscriber_id}/risk", 404) in provoked
    assert ("alerting", "GET", "/v1/silences/{silence_id}", 404) in provoked
    assert len(provoked) >= 100  # four services' worth, not a few


@session_loop
async def test_framework_errors_are_problem_json_on_every_service(
    services: list[Service],
) -> None:
    for s in services:
        unknown = await s.call("GET", "/v1/no-such-path")
        assert _check_problem(unknown, 404, s.name)["code"] == "not_found"
        # A wrong method is refused before any key is checked.
        path = next(
            p for p, item in s.doc["paths"].items() if p.startswith("/v1") and "put" not in item
        )
        wrong = await s.call("PUT", _url(path))
        assert _check_problem(wrong, 405, s.name)["code"] == "method_not_allowed"
        assert "allow" in {k.lower() for k in wrong.headers}


@session_loop
async def test_a_request_id_belongs_to_its_request() -> None:
    """asgi-correlation-id's context variable is reset after the request.

    A bare app (the services' metrics middleware would run the rest in a task
    of its own): the ASGI client calls it in this very task.
    """
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/id")
    async def the_id() -> dict[str, str | None]:
        return {"id": current_request_id()}

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bare"
    ) as client:
        mine = await client.get("/id", headers={"X-Request-ID": "mine-1"})
        assert mine.json() == {"id": "mine-1"} and mine.headers["x-request-id"] == "mine-1"
        assert current_request_id() is None
        replaced = await client.get("/id", headers={"X-Request-ID": "not sane"})
        assert replaced.json()["id"] == replaced.headers["x-request-id"] != "not sane"
        assert current_request_id() is None


@session_loop
async def test_an_all_invalid_batch_is_a_problem_but_a_partly_valid_one_is_not(
    services: list[Service],
) -> None:
    ingest = next(s for s in services if s.name == "ingest")
    headers = ingest.key("POST", "/v1/events")
    bad = await ingest.call("POST", "/v1/events", headers=headers, json=[{"event_type": "cdr"}])
    body = _check_problem(bad, 422, "ingest all invalid")
    assert body["code"] == "unprocessable_entity"
    assert body["details"]["rejected"][0]["index"] == 0


def test_every_error_kind_has_a_stable_documented_type() -> None:
    docs = (REPO / "docs" / "problems.md").read_text()
    for problem in PROBLEM_TYPES.values():
        assert f"`{problem.uri}`" in docs, f"docs/problems.md lacks {problem.uri}"
        assert f"`{problem.code}`" in docs, problem.code
    # Every exception class of the tree answers with a listed kind at the listed status.
    classes: list[type[ChurnwatchError]] = [ChurnwatchError]
    seen = []
    while classes:
        cls = classes.pop()
        seen.append(cls)
        classes.extend(cls.__subclasses__())
        assert cls.code in PROBLEM_TYPES, f"{cls.__name__}: code {cls.code!r} has no type"
        assert PROBLEM_TYPES[cls.code].status == cls.status_code, cls.__name__
    assert len(seen) > 20  # outreach's own errors too (imported with its app above)
