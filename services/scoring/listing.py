"""Who is at risk, for other systems: the filtered, ordered, paged listing and its export.

``GET /v1/subscribers`` (views.py) lists the subscribers with a served score,
highest score first (ties by subscriber id, descending), filtered by band,
tier, account manager, score range and change time. It reads columns of
``scoring.features`` that every write copies from the state
(:func:`listed_columns`), never a blob, and is served by the
``(score, subscriber_id)`` index.

Paging is by keyset, not offset: a cursor holds the last row's score and id.
It also holds the walk's PostgreSQL snapshot (``pg_current_snapshot()`` at the
first page): a write that changes a row's listed values records its
transaction (``changed_xid``), and later pages leave out rows changed by a
transaction the first page could not see. So a walk never lists a row twice,
and lists every row that did not change while it ran exactly once; the rows
that changed are found afterwards with ``changed_since`` (docs/scoring.md,
"Listing"). A cursor is bound to its filters by a digest; a cursor that is
not one of ours, was altered or comes from other filters is a 400.

The export streams the same filtered set, in one statement (one consistent
snapshot), row by row from a server-side cursor: it never holds the set in
memory.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any, Literal

import orjson
from sqlalchemy import Select, bindparam, select, text, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from services.scoring.features import State
from services.scoring.tables import features
from shared.errors import BadRequest

Band = Literal["high", "medium", "low"]
"""A risk band (``ScoringSettings.band``)."""

LIMIT_DEFAULT = 100
"""Rows a page has when the caller does not say."""
LIMIT_MAX = 1000
"""Most rows a page may have; a bigger ``limit`` is a 422."""
CURSOR_MAX_CHARS = 8000
"""Longest cursor accepted (its snapshot lists the transactions running then)."""
_SNAPSHOT_MAX_CHARS = 5000
"""Longest snapshot a cursor carries as it is (some 450 writers running at once)."""

FIELDS = ("subscriber_id", "score", "band", "tier", "account_manager_id", "changed_at")
"""A listed row's fields, in the export's column order (no phone: scoring holds none)."""
LISTED = tuple(features.c[name] for name in FIELDS)
"""The columns of :data:`FIELDS`."""

_VERSION = 1
# PostgreSQL's pg_snapshot text: xmin:xmax:xip,... (xids of running transactions).
_SNAPSHOT = re.compile(r"^([0-9]{1,19}):([0-9]{1,19}):((?:[0-9]{1,19})(?:,[0-9]{1,19})*)?$")
_VISIBLE = text(
    "(scoring.features.changed_xid IS NULL OR pg_visible_in_snapshot("
    "CAST(CAST(scoring.features.changed_xid AS text) AS xid8), CAST(:snap AS pg_snapshot)))"
)


# When a walk begins, for changed_since afterwards: now(), or the start of the oldest
# writing transaction still running (a write's changed_at is its transaction's start,
# and the walk leaves out what the running ones change). pg_stat_activity shows other
# sessions' start times to the same role (scoring's own consumer) or to
# pg_read_all_stats; to anyone else they are NULL, and as_of is just now().
_WALK_START = text(
    "SELECT LEAST(now(), min(xact_start)) FROM pg_stat_activity WHERE backend_xid IS NOT NULL"
    " AND datname = current_database() AND pid <> pg_backend_pid()"
)


class MalformedCursor(BadRequest):
    """A cursor that is not one this service made for this query (400 ``bad_request``)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"bad cursor: {why}", details={"parameter": "cursor"})


def listed_columns(state: State | None) -> dict[str, Any]:
    """The listed columns of a state: the served band, the profile's tier, the manager.

    ``band`` is None until a score is served (a warm-started state), which keeps
    the row out of the listing.
    """
    if state is None:
        return {"band": None, "tier": None, "account_manager_id": None}
    latest = state.get("latest") or {}
    scored = state.get("scored")
    profile = latest.get("profile")
    manager = latest.get("manager")
    return {
        "band": scored.get("band") if scored else None,
        "tier": profile[0][0] if profile else None,
        "account_manager_id": manager[0] if manager else None,
    }


@dataclass(frozen=True)
class Filters:
    """What a listing is filtered on; every field is optional and they all apply."""

    bands: tuple[Band, ...] = ()
    tier: str | None = None
    manager: str | None = None
    min_score: float | None = None
    max_score: float | None = None
    changed_since: datetime | None = None

    def digest(self) -> str:
        """A short digest that binds a cursor to these filters."""
        canonical = {**asdict(self), "bands": sorted(set(self.bands))}
        blob = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
        return hashlib.blake2b(blob, digest_size=8, person=b"cw-list-f").hexdigest()

    def apply(self, query: Select[Any]) -> Select[Any]:
        """``query`` narrowed to the listed rows these filters keep."""
        query = query.where(features.c.band.is_not(None), features.c.score.is_not(None))
        if self.bands:
            query = query.where(features.c.band.in_(sorted(set(self.bands))))
        if self.tier is not None:
            query = query.where(features.c.tier == self.tier)
        if self.manager is not None:
            query = query.where(features.c.account_manager_id == self.manager)
        if self.min_score is not None:
            query = query.where(features.c.score >= self.min_score)
        if self.max_score is not None:
            query = query.where(features.c.score <= self.max_score)
        if self.changed_since is not None:
            query = query.where(features.c.changed_at >= self.changed_since)
        return query


@dataclass(frozen=True)
class Cursor:
    """Where a walk stands: the last row listed, the walk's snapshot and start, its filters."""

    score: float
    subscriber_id: str
    snapshot: str
    as_of: datetime
    filters: str

    def encode(self) -> str:
        """Opaque to clients: base64url of the fields and a digest of them."""
        body = orjson.dumps(
            [_VERSION, self.score, self.subscriber_id, self.snapshot, self.as_of, self.filters]
        )
        return _b64(_check(body) + body)

    @classmethod
    def decode(cls, token: str, *, filters: Filters) -> Cursor:
        """Read a cursor made by :meth:`encode` for ``filters``; ``MalformedCursor`` if not."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError as exc:
            raise MalformedCursor("not base64url") from exc
        check, body = raw[:8], raw[8:]
        if len(raw) < 9 or check != _check(body):
            raise MalformedCursor("not a cursor of this listing, or altered")
        try:
            version, score, sid, snapshot, as_of, digest = orjson.loads(body)
            at = datetime.fromisoformat(as_of)
            cursor = cls(float(score), str(sid), str(snapshot), at, str(digest))
        except (ValueError, TypeError) as exc:
            raise MalformedCursor("not a cursor of this listing") from exc
        if version != _VERSION or cursor.as_of.tzinfo is None:
            raise MalformedCursor("not a cursor of this version")
        if digest != filters.digest():
            raise MalformedCursor("made for other filters; start again without a cursor")
        _check_snapshot(snapshot)
        return cursor


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _check(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=8, person=b"cw-list-c").digest()


def _check_snapshot(snapshot: str) -> None:
    """Only a snapshot PostgreSQL would accept passes (else the query would fail, a 500)."""
    match = _SNAPSHOT.match(snapshot)
    if match is None:
        raise MalformedCursor("bad snapshot")
    xmin, xmax = int(match[1]), int(match[2])
    running = [int(x) for x in match[3].split(",")] if match[3] else []
    ordered = all(a < b for a, b in pairwise(running))
    if not (0 < xmin <= xmax < 2**63 and ordered and all(xmin <= x < xmax for x in running)):
        raise MalformedCursor("bad snapshot")


def _ordered(query: Select[Any]) -> Select[Any]:
    return query.order_by(features.c.score.desc(), features.c.subscriber_id.desc())


async def list_page(
    conn: AsyncConnection, *, filters: Filters, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None, datetime]:
    """One page of the listing, the next page's cursor (None at the end) and the walk's start.

    The first page (no cursor) takes the walk's snapshot and start time; every
    page leaves out rows whose listed values changed after the snapshot.
    """
    if cursor is None:
        snapshot = str(await conn.scalar(text("SELECT pg_current_snapshot()::text")))
        if len(snapshot) > _SNAPSHOT_MAX_CHARS:
            # Too many writers running to list in a cursor: treat every transaction
            # from the oldest running one on as running (more rows left to changed_since).
            xmin = snapshot.split(":", 1)[0]
            snapshot = f"{xmin}:{xmin}:"
        # After the snapshot: the writers it saw running are still listed (or just done).
        as_of = await conn.scalar(_WALK_START)
        query = filters.apply(select(*LISTED))
    else:
        at = Cursor.decode(cursor, filters=filters)
        snapshot, as_of = at.snapshot, at.as_of
        query = filters.apply(select(*LISTED)).where(
            tuple_(features.c.score, features.c.subscriber_id) < (at.score, at.subscriber_id)
        )
    query = _ordered(query.where(_VISIBLE.bindparams(bindparam("snap", snapshot)))).limit(limit + 1)
    rows = [dict(r._mapping) for r in await conn.execute(query)]
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        last = rows[-1]
        next_cursor = Cursor(
            last["score"], last["subscriber_id"], snapshot, as_of, filters.digest()
        ).encode()
    return rows, next_cursor, as_of


async def stream_listed(
    conn: AsyncConnection, *, filters: Filters, chunk: int = 1000
) -> AsyncIterator[Sequence[Any]]:
    """Every listed row ``filters`` keep, in the listing's order, ``chunk`` rows at a time.

    One statement through a server-side cursor (the connection must be in a
    transaction): one consistent snapshot, memory bounded by ``chunk``.
    """
    result = await conn.stream(
        _ordered(filters.apply(select(*LISTED))).execution_options(yield_per=chunk)
    )
    async for part in result.partitions(chunk):
        yield part
