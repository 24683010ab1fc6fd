"""API keys with scopes on every churnwatch HTTP API (but probes, metrics and docs).

A key is ``cw_<key id>_<secret>``. Only the SHA-256 of the secret is stored
(table ``auth.api_keys``); the secret is random (256 bits), so a plain hash is
as strong as a slow one and costs nothing per request. A request sends the key
as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; the key id finds
the row, and the hashes are compared in constant time.

Each route declares the one scope it needs with ``require_scope``: no key, or an
unknown, revoked or malformed one, is a 401; a valid key without the scope is a
403, both problem details (``application/problem+json``, ``shared.errors``).
Key rows are cached per process for ``AUTH_CACHE_TTL_S`` seconds, so a
revocation takes effect within that time everywhere without a database query
per request.

Keys are managed with ``churnwatch keys create|list|revoke`` (``churnwatch.keys``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, get_args

from fastapi import Depends, FastAPI, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import (
    Column,
    DateTime,
    String,
    Table,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from shared.db import make_metadata, ping
from shared.errors import Forbidden, Unauthorized, error_responses
from shared.settings import BaseServiceSettings

Scope = Literal["events:write", "scores:read", "tasks:read", "tasks:write", "queue:work", "admin"]
"""What a key may do: post events, read scores, read or change tasks, work the call
queue, or administer (silences, rules, the do-not-contact list)."""

SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)
"""Every scope, in documentation order."""

KEY_PREFIX = "cw_"
# cw_<12 hex digits>_<43 URL-safe base64 characters>; the secret may itself hold '_'.
_KEY_RE = re.compile(r"^cw_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")

metadata = make_metadata("auth")

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", String(12), primary_key=True),
    Column("name", String(64), nullable=False),
    # Hex SHA-256 of the secret part; the secret itself is shown once and never stored.
    Column("secret_sha256", String(64), nullable=False),
    Column("scopes", ARRAY(String(32)), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # Refreshed when a service loads the key into its cache (so at most once per TTL).
    Column("last_used_at", DateTime(timezone=True), nullable=True),
    comment="API keys of the churnwatch HTTP APIs: hashed secrets and scopes.",
)


@dataclass(frozen=True)
class ApiKey:
    """A stored key as the services see it (no secret, only its hash)."""

    key_id: str
    name: str
    secret_sha256: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a key's secret part."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(token: str) -> tuple[str, str] | None:
    """``(key id, secret)`` of a well-formed key, else None."""
    match = _KEY_RE.match(token)
    return (match.group(1), match.group(2)) if match else None


def _row_to_key(row: Any) -> ApiKey:
    return ApiKey(
        key_id=row.key_id,
        name=row.name,
        secret_sha256=row.secret_sha256,
        scopes=frozenset(row.scopes),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


# --- key management (the CLI); keyword-only, never commits ----------------------------


async def create_key(
    conn: AsyncConnection, *, name: str, scopes: Sequence[str], now: datetime
) -> tuple[ApiKey, str]:
    """Store a new key; return it and the full key string (to show once)."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"unknown or no scopes {unknown}; known: {', '.join(SCOPES)}")
    if not 1 <= len(name) <= 64:
        raise ValueError("a key's name has 1 to 64 characters")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    ordered = [s for s in SCOPES if s in set(scopes)]
    await conn.execute(
        api_keys.insert().values(
            key_id=key_id,
            name=name,
            secret_sha256=hash_secret(secret),
            scopes=ordered,
            created_at=now,
        )
    )
    key = ApiKey(key_id, name, hash_secret(secret), frozenset(ordered), now, None, None)
    return key, f"{KEY_PREFIX}{key_id}_{secret}"


async def list_keys(conn: AsyncConnection, *, include_revoked: bool = True) -> list[ApiKey]:
    """Every key, oldest first (hashes included; never print them)."""
    query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.key_id)
    if not include_revoked:
        query = query.where(api_keys.c.revoked_at.is_(None))
    return [_row_to_key(row) for row in await conn.execute(query)]


async def get_key(conn: AsyncConnection, *, key_id: str) -> ApiKey | None:
    """One key by id, revoked or not."""
    row = (await conn.execute(select(api_keys).where(api_keys.c.key_id == key_id))).first()
    return _row_to_key(row) if row is not None else None


async def revoke_key(conn: AsyncConnection, *, key_id: str, now: datetime) -> bool:
    """Revoke a key; False if there is no such key or it was revoked already."""
    result = await conn.execute(
        update(api_keys)
        .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return bool(result.rowcount)


def key_matches(key: ApiKey, token: str) -> bool:
    """Whether the full key string ``token`` is this (unrevoked) key."""
    parsed = parse_key(token)
    return (
        parsed is not None
        and parsed[0] == key.key_id
        and key.revoked_at is None
        and hmac.compare_digest(hash_secret(parsed[1]), key.secret_sha256)
    )


# --- checking requests ----------------------------------------------------------------


class KeyStore:
    """Looks keys up by id, with a per-process cache of ``ttl_s`` seconds.

    Unknown ids are cached too (as None), so guessing ids costs the database
    one query per id per TTL at most; the cache is emptied when it gets big.
    """

    MAX_ENTRIES = 10_000

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def reachable(self) -> bool:
        """Whether API keys can be checked now: the key table's database answers."""
        return await ping(self._engine)

    async def lookup(self, key_id: str) -> ApiKey | None:
        """The key with this id (revoked or not), or None."""
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self._ttl_s:
            return cached[1]
        async with self._engine.begin() as conn:
            key = await get_key(conn, key_id=key_id)
            if key is not None and key.revoked_at is None:
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.key_id == key_id)
                    .values(last_used_at=datetime.now(UTC))
                )
        if len(self._cache) >= self.MAX_ENTRIES:
            self._cache.clear()
        self._cache[key_id] = (now, key)
        return key


_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKeyBearer",
    description="An API key (`churnwatch keys create`) as `Authorization: Bearer cw_...`.",
)
_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description="The same API key in an `X-API-Key` header instead.",
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="churnwatch"'}


def _settings(request: Request) -> BaseServiceSettings:
    """The app's settings; every service's ``create_app`` stores its own there."""
    settings: BaseServiceSettings = request.app.state.settings
    return settings


def _keystore(request: Request) -> KeyStore:
    """The key store ``install_auth`` gave the app."""
    store: KeyStore = request.app.state.keystore
    return store


async def authenticate(request: Request, token: str | None, scope: str) -> ApiKey | None:
    """The key behind ``token`` if it grants ``scope``; 401 or 403 otherwise.

    None when the app runs with ``AUTH_ENABLED=false``.
    """
    if not _settings(request).auth_enabled:
        return None
    if not token:
        raise Unauthorized("an API key is required", headers=_CHALLENGE)
    parsed = parse_key(token)
    if parsed is None:
        raise Unauthorized("malformed API key", headers=_CHALLENGE)
    key = await _keystore(request).lookup(parsed[0])
    # One message for unknown, revoked and wrong secret: the caller learns nothing.
    if key is None or not key_matches(key, token):
        raise Unauthorized("unknown or revoked API key", headers=_CHALLENGE)
    if scope not in key.scopes:
        raise Forbidden(
            f"this API key lacks the scope {scope!r}",
            details={"required_scope": scope, "key_id": key.key_id},
        )
    request.state.api_key = key
    return key


class RequireScope:
    """FastAPI dependency: the request's API key must grant ``scope``.

    A class rather than a closure so that tests (and the docs) can read the
    scope of every route from ``route.dependant``.
    """

    def __init__(self, scope: Scope) -> None:
        if scope not in SCOPES:  # a typo would lock everyone out of the route
            raise ValueError(f"unknown scope {scope!r}")
        self.scope: Scope = scope

    async def __call__(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)],
        header: Annotated[str | None, Depends(_HEADER)],
    ) -> ApiKey | None:
        """Check the request's key (bearer first, then ``X-API-Key``)."""
        token = bearer.credentials if bearer is not None else header
        return await authenticate(request, token, self.scope)


def require_scope(scope: Scope) -> Any:
    """``dependencies=[require_scope("tasks:read")]`` on a route or router."""
    return Security(RequireScope(scope), scopes=[scope])


def route_scope(dependencies: Sequence[Any]) -> Scope | None:
    """The scope a route's dependant requires (``route.dependant.dependencies``), if any."""
    for dependency in dependencies:
        if isinstance(dependency.call, RequireScope):
            scope: Scope = dependency.call.scope
            return scope
        found = route_scope(dependency.dependencies)
        if found is not None:
            return found
    return None


def auth_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a router's key-checked routes: 401, 403, and 503.

    The 503: a key is looked up in PostgreSQL (cached for ``AUTH_CACHE_TTL_S``),
    so with the database down any key-checked route may answer it.
    """
    return error_responses(
        401,
        403,
        503,
        described={
            503: "A dependency (the database that holds the API keys, the broker) is "
            "unavailable; retry after Retry-After."
        },
    )


def install_auth(app: FastAPI, settings: BaseServiceSettings, engine: AsyncEngine) -> None:
    """Give ``app`` the key store its routes' ``require_scope`` checks use."""
    app.state.keystore = KeyStore(engine, ttl_s=settings.auth_cache_ttl_s)
