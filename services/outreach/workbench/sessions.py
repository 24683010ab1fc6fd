"""Browser sessions of the workbench: cookie tokens, expiry, CSRF tokens.

The cookie ``cw_session`` holds a random token (``secrets.token_urlsafe(32)``);
only its SHA-256 is stored, so a copy of the table signs nobody in. A session
ends after ``WORKBENCH_SESSION_IDLE_S`` unused or ``WORKBENCH_SESSION_MAX_S``
after sign-in, and at sign-out (its row is deleted). Each session has its own
CSRF token, which every POST form carries as the hidden field ``csrf_token``.

Sessions and lockouts run on the wall clock, not the service's clock: in a
simulation outreach's clock is the replayed stream's time, which races through
days in minutes and would sign a person out at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import Response

from services.outreach.settings import OutreachSettings
from services.outreach.tables import people, web_sessions
from services.outreach.workbench.accounts import Person, person_of

COOKIE = "cw_session"
"""The session cookie's name."""

SIGN_IN_COOKIE = "cw_signin"
"""Double-submit token of the sign-in form (there is no session yet to hold one)."""

COOKIE_PATH = "/ui"
"""Cookies go to the workbench's pages only, never to the API."""

TOUCH_EVERY = timedelta(seconds=60)
"""``last_seen_at`` is written at most this often per session."""


def token_hash(token: str) -> str:
    """SHA-256 hex of a cookie token: what the table stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def same_token(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a submitted token with the expected one."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True, slots=True)
class WebSession:
    """A signed-in session: who, and the CSRF token its forms carry."""

    person: Person
    csrf_token: str
    token_hash: str


async def start_session(
    conn: AsyncConnection, *, person_id: str, now: datetime, max_s: float
) -> tuple[str, str]:
    """A new session for ``person_id``: ``(cookie token, csrf token)``."""
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    await conn.execute(
        web_sessions.insert().values(
            token_hash=token_hash(token),
            person_id=person_id,
            csrf_token=csrf,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=max_s),
        )
    )
    return token, csrf


async def load_session(
    conn: AsyncConnection, *, token: str, now: datetime, idle_s: float
) -> WebSession | None:
    """The live session of a cookie token, or None (unknown, expired, idle, disabled).

    An expired or idle session's row is deleted; a live one is touched.
    """
    hashed = token_hash(token)
    row = (
        await conn.execute(
            select(web_sessions, people)
            .join(people, people.c.person_id == web_sessions.c.person_id)
            .where(web_sessions.c.token_hash == hashed)
        )
    ).first()
    if row is None:
        return None
    idle = row.last_seen_at + timedelta(seconds=idle_s) <= now
    if row.expires_at <= now or idle or row.disabled:
        await conn.execute(delete(web_sessions).where(web_sessions.c.token_hash == hashed))
        return None
    if now - row.last_seen_at >= TOUCH_EVERY:
        await conn.execute(
            update(web_sessions).where(web_sessions.c.token_hash == hashed).values(last_seen_at=now)
        )
    return WebSession(person_of(row), row.csrf_token, hashed)


async def end_session(conn: AsyncConnection, *, token: str) -> None:
    """Sign out: delete the session's row."""
    await conn.execute(delete(web_sessions).where(web_sessions.c.token_hash == token_hash(token)))


def secure_cookies(request: Request, settings: OutreachSettings) -> bool:
    """Whether cookies get ``Secure``: the setting, else whether the request came over TLS."""
    if settings.workbench_secure_cookies is not None:
        return settings.workbench_secure_cookies
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_cookie(
    response: Response,
    request: Request,
    settings: OutreachSettings,
    *,
    name: str,
    value: str,
    max_age: int | None,
) -> None:
    """Set a workbench cookie: HttpOnly, SameSite=Lax, Path=/ui, Secure per TLS."""
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request, settings),
    )


def clear_cookie(
    response: Response, request: Request, settings: OutreachSettings, name: str
) -> None:
    """Remove a workbench cookie."""
    response.delete_cookie(
        name,
        path=COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request, settings),
    )
