"""API keys on every route of every service, read from ``app.routes``, not from a list.

Each service app runs (lifespan and all) with ``AUTH_ENABLED=true`` on the
session's broker and PostgreSQL. For every route that is not a probe, the
metrics, the API docs or a provider webhook, the test asserts: 401 without a
key, 401 with a malformed, unknown or revoked key, 403 with a valid key of
another scope, and neither with a key of the route's own scope. A new route
without ``require_scope`` fails ``test_every_route_declares_a_scope``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from pydantic import ValidationError
from typer.testing import CliRunner

from churnwatch.cli import app as cli_app
from churnwatch.keys import ensure_dev_key
from services.alerting.app import create_app as alerting_app
from services.alerting.settings import AlertingSettings
from services.ingest.app import create_app as ingest_app
from services.ingest.settings import IngestSettings
from services.outreach.app import create_app as outreach_app
from services.outreach.policy import sign
from services.outreach.settings import OutreachSettings
from services.scoring.app import create_app as scoring_app
from services.scoring.settings import ScoringSettings
from shared.auth import SCOPES, create_key, list_keys, revoke_key, route_scope
from shared.db import create_engine
from shared.settings import BaseServiceSettings
from tests.conftest import Stack
from tests.helpers import profile, sid

# Only the async tests share the session loop (a mark on a sync test is a warning).
session_loop = pytest.mark.asyncio(loop_scope="session")

# Open on purpose: probes and metrics (scraped by infrastructure), the API docs,
# and the SMS provider's webhooks, which carry an HMAC signature instead.
OPEN = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/openapi.json",
    "/v1/sms/receipts",
    "/v1/sms/inbound",
}

# A well-formed value for each path parameter, so a right-scope call reaches the handler.
PATH_VALUES = {
    "task_id": str(uuid.uuid4()),
    "silence_id": str(uuid.uuid4()),
    "subscriber_id": "S-auth-test",
    "queue": "general",
    "name": "cdr",
}


def _apps(env: dict[str, Any]) -> dict[str, FastAPI]:
    settings = {**env, "auth_enabled": True, "auth_cache_ttl_s": 0}
    return {
        "ingest": ingest_app(IngestSettings(**settings)),
        "scoring": scoring_app(ScoringSettings(**settings)),
        "alerting": alerting_app(AlertingSettings(**settings)),
        "outreach": outreach_app(OutreachSettings(**settings)),
    }


@dataclass(frozen=True)
class Route:
    """One method of one path, and the scope it declares (None: it declares none)."""

    path: str
    method: str
    scope: str | None

    @property
    def url(self) -> str:
        """The path with a well-formed value for each parameter."""
        return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PATH_VALUES[m.group(1)], self.path)


def _protected(app: FastAPI) -> list[Route]:
    # iter_route_contexts: FastAPI includes routers lazily, so app.routes alone
    # does not list the routes of included routers.
    routes = []
    for context in iter_route_contexts(app.routes):
        if context.path in OPEN or context.path is None:
            continue
        if context.path.startswith("/ui"):
            # The workbench's pages: people sign in with a session, not an API key
            # (tests/test_workbench.py checks every page refuses the signed-out).
            continue
        dependant = getattr(context, "dependant", None)
        scope = route_scope(dependant.dependencies) if dependant is not None else None
        for method in sorted(context.methods or ()):
            if method != "HEAD":
                routes.append(Route(context.path, method, scope))
    return routes


@dataclass
class Keys:
    """One key per scope, plus a revoked one, in the session database."""

    by_scope: dict[str, str]
    revoked: str


@pytest.fixture
async def keys(stack: Stack) -> AsyncIterator[Keys]:
    engine = create_engine(BaseServiceSettings(database_url=stack.database_url))
    now = datetime.now(UTC)
    by_scope: dict[str, str] = {}
    async with engine.begin() as conn:
        for scope in SCOPES:
            _, by_scope[scope] = await create_key(conn, name=f"t-{scope}", scopes=[scope], now=now)
        gone, revoked = await create_key(conn, name="t-revoked", scopes=list(SCOPES), now=now)
        await revoke_key(conn, key_id=gone.key_id, now=now)
    yield Keys(by_scope, revoked)
    await engine.dispose()


def test_every_route_declares_a_scope(env: dict[str, Any]) -> None:
    for service, app in _apps(env).items():
        routes = _protected(app)
        assert routes, service
        missing = [f"{r.method} {r.path}" for r in routes if r.scope is None]
        assert missing == [], f"{service} routes without require_scope: {missing}"


async def _call(client: httpx.AsyncClient, route: Route, headers: dict[str, str]) -> httpx.Response:
    body = b"{}" if route.method in ("POST", "PUT") else None
    headers = {"content-type": "application/json", **headers}
    return await client.request(route.method, route.url, content=body, headers=headers)


@session_loop
async def test_every_protected_route_answers_401_403_and_lets_its_scope_in(
    env: dict[str, Any], keys: Keys
) -> None:
    checked = 0
    for service, app in _apps(env).items():
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url=f"http://{service}"
            ) as client,
        ):
            for route in _protected(app):
                scope = route.scope
                assert scope is not None
                what = f"{service} {route.method} {route.path}"
                other = next(s for s in SCOPES if s != scope)
                bad_secret = keys.by_scope[scope][:-4] + "AAAA"
                for headers in (
                    {},
                    {"Authorization": "Bearer not-a-key"},
                    {"Authorization": f"Bearer {bad_secret}"},
                    {"Authorization": f"Bearer {keys.revoked}"},
                    {"Authorization": f"Basic {keys.by_scope[scope]}"},
                ):
                    response = await _call(client, route, headers)
                    assert response.status_code == 401, (what, headers, response.text)
                    assert response.json()["code"] == "unauthorized"
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                wrong = await _call(
                    client, route, {"Authorization": f"Bearer {keys.by_scope[other]}"}
                )
                assert wrong.status_code == 403, (what, wrong.text)
                assert wrong.json()["details"]["required_scope"] == scope
                for headers in (
                    {"Authorization": f"Bearer {keys.by_scope[scope]}"},
                    {"X-API-Key": keys.by_scope[scope]},
                ):
                    right = await _call(client, route, headers)
                    # Past the key check: the handler answered (a 404 or 422 for our
                    # made-up ids and empty bodies is fine), and did not fail.
                    assert right.status_code not in (401, 403), (what, right.text)
                    assert right.status_code < 500, (what, right.text)
                checked += 1
    assert checked >= 20  # every route of the four services, not a few


@session_loop
async def test_probes_metrics_docs_and_webhooks_need_no_key(env: dict[str, Any]) -> None:
    apps = _apps(env)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=apps["outreach"]), base_url="http://outreach"
    ) as client:
        for path in ("/healthz", "/metrics", "/openapi.json", "/docs"):
            assert (await client.get(path)).status_code == 200, path
        # The provider's webhooks are judged by their signature, not by an API key:
        # unsigned is a 401 naming the signature, signed passes without any key.
        unsigned = await client.post("/v1/sms/inbound", content=b"{}")
        assert unsigned.status_code == 401
        assert "X-Signature" in unsigned.json()["detail"]
        body = orjson.dumps({"message_id": "m-1", "sender": "+15550001234", "text": "hello"})
        secret = apps["outreach"].state.settings.sms_receipt_secret.get_secret_value()
        signed = await client.post(
            "/v1/sms/inbound",
            content=body,
            headers={"X-Signature": sign(body, secret, timestamp=int(time.time()))},
        )
        assert signed.status_code == 200, signed.text
        assert signed.json()["action"] == "ignored"


def test_openapi_documents_the_security_schemes(env: dict[str, Any]) -> None:
    for service, app in _apps(env).items():
        doc = app.openapi()
        schemes = doc["components"]["securitySchemes"]
        assert schemes["ApiKeyBearer"]["scheme"] == "bearer", service
        assert schemes["ApiKeyHeader"]["name"] == "X-API-Key", service
        for route in _protected(app):
            path = route.path.replace(":path}", "}")
            operation = doc["paths"][path][route.method.lower()]
            assert operation["security"], route
            assert {"401", "403"} <= set(operation["responses"]), route
        assert "security" not in doc["paths"]["/healthz"]["get"]


@session_loop
async def test_a_revoked_key_is_refused_once_the_cache_expires(
    env: dict[str, Any], stack: Stack
) -> None:
    settings = IngestSettings(**{**env, "auth_enabled": True, "auth_cache_ttl_s": 0})
    app = ingest_app(settings)
    engine = create_engine(settings)
    async with engine.begin() as conn:
        key, token = await create_key(
            conn, name="billing", scopes=["events:write"], now=datetime.now(UTC)
        )
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://i") as client,
    ):
        first = await client.post("/v1/events", json=profile(sid()), headers=headers)
        assert first.status_code == 202, first.text
        async with engine.begin() as conn:
            assert await revoke_key(conn, key_id=key.key_id, now=datetime.now(UTC))
        second = await client.post("/v1/events", json=profile(sid()), headers=headers)
        assert second.status_code == 401
    async with engine.connect() as conn:
        (stored,) = [k for k in await list_keys(conn) if k.key_id == key.key_id]
    await engine.dispose()
    assert stored.last_used_at is not None and stored.revoked_at is not None
    assert token not in repr(stored)  # only the hash is kept


def test_production_refuses_auth_disabled() -> None:
    production: dict[str, Any] = {
        "environment": "production",
        "kafka_bootstrap_servers": "kafka:9092",
        "database_url": "postgresql://u:p@db/churnwatch",
    }
    assert BaseServiceSettings(**production).auth_enabled
    with pytest.raises(ValidationError, match="AUTH_ENABLED"):
        BaseServiceSettings(**production, auth_enabled=False)


def test_unknown_scope_is_refused_when_declaring_a_route() -> None:
    from shared.auth import RequireScope

    bad: Any = "tasks:delete"
    with pytest.raises(ValueError, match="unknown scope"):
        RequireScope(bad)


def test_keys_cli_create_list_revoke(stack: Stack, tmp_path: Any) -> None:
    runner = CliRunner()
    environ = {"DATABASE_URL": stack.database_url}
    created = runner.invoke(
        cli_app,
        ["keys", "create", "--name", "crm", "--scope", "tasks:read", "--scope", "tasks:write"],
        env=environ,
    )
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert re.fullmatch(r"cw_[0-9a-f]{12}_[A-Za-z0-9_-]+", token), created.output
    key_id = token[3:15]

    listed = runner.invoke(cli_app, ["keys", "list"], env=environ)
    assert listed.exit_code == 0, listed.output
    assert key_id in listed.output and "\tcrm\ttasks:read,tasks:write\t" in listed.output
    assert token[16:] not in listed.output  # never the secret

    bad = runner.invoke(cli_app, ["keys", "create", "--name", "x", "--scope", "root"], env=environ)
    assert bad.exit_code == 2 and "unknown or no scopes" in bad.output

    assert runner.invoke(cli_app, ["keys", "revoke", key_id], env=environ).exit_code == 0
    again = runner.invoke(cli_app, ["keys", "revoke", key_id], env=environ)
    assert again.exit_code == 1  # already revoked
    assert key_id not in runner.invoke(cli_app, ["keys", "list"], env=environ).output
    assert key_id in runner.invoke(cli_app, ["keys", "list", "--all"], env=environ).output

    # churnwatch up's key: all scopes, saved privately, reused while valid.
    path = tmp_path / "dev-api-key"
    dev = ensure_dev_key(stack.database_url, path)
    assert ensure_dev_key(stack.database_url, path) == dev
    assert path.stat().st_mode & 0o777 == 0o600
    dev_id = dev[3:15]
    assert runner.invoke(cli_app, ["keys", "revoke", dev_id], env=environ).exit_code == 0
    assert ensure_dev_key(stack.database_url, path) != dev  # revoked: a new one
