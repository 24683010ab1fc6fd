"""The workbench's browser sessions in the database: start, load (expire, touch) and end.

The cookie holds a random token (``secrets.token_urlsafe(32)``); only its
SHA-256 is stored, so a copy of ``outreach.web_sessions`` signs nobody in. A
session ends after ``idle_s`` unused or ``max_s`` after sign-in, and at
sign-out (its row is deleted). Each session has its own CSRF token, which every
POST form carries. The cookies themselves are the workbench's
(``workbench/sessions.py``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.service.people import Person, person_of
from services.outreach.tables import people, web_sessions

TOUCH_EVERY = timedelta(seconds=60)
"""``last_seen_at`` is written at most this often per session."""


def token_hash(token: str) -> str:
    """SHA-256 hex of a cookie token: what the table stores."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


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
