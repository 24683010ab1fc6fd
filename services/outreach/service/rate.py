"""The deployment-wide send rate: a token bucket in one row, taken from atomically.

Every outreach replica takes its tokens from the same row of ``send_rates``
(one row per bucket; ``sms`` for the provider's contracted rate), so the rate
holds for the deployment, whatever the number of replicas. One statement
refills the bucket for the time since its last use, on the **database's
clock** (``clock_timestamp()``: replicas' clocks may disagree, the database's
is one), and takes what it grants; the row lock serialises the replicas.

A grant is never more than the bucket holds (no debt), so over any interval
the whole deployment is granted at most ``capacity + rate * interval`` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Executable,
    Float,
    Integer,
    cast,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.tables import send_rates


@dataclass(frozen=True, slots=True)
class Grant:
    """What one round trip to the bucket gave."""

    granted: int
    """Tokens taken (0: the bucket held less than one)."""
    tokens: float
    """What the bucket holds after the grant (under one token, unless ``want`` was less)."""
    at: datetime
    """The bucket's time of this grant (the database's clock, unless ``now`` was given)."""


def _now(now: datetime | None) -> ColumnElement[datetime]:
    """``now`` if given (tests with a clock of their own), else the database's clock."""
    if now is None:
        return func.clock_timestamp()
    return literal(now, DateTime(timezone=True))


async def take_tokens(
    conn: AsyncConnection,
    *,
    name: str,
    want: int,
    rate: float,
    capacity: float,
    now: datetime | None = None,
) -> Grant:
    """Refill bucket ``name`` (``rate``/s, at most ``capacity``); take up to ``want`` tokens.

    The row is made full on its first use. ``now`` (default: the database's
    ``clock_timestamp()``) is the bucket's time. The row is locked
    (``FOR UPDATE``) before it is read, so concurrent callers take turns on
    the newest value; the time a caller refills to is never before the row's
    ``updated_at``, so no interval is credited twice, however the callers'
    clocks or lock waits interleave.
    """
    at = _now(now)
    grant = await conn.execute(_take(name=name, want=want, rate=rate, capacity=capacity, at=at))
    row = grant.one_or_none()
    if row is None:
        # First use of this bucket: full, as a fresh process's bucket was.
        await conn.execute(
            insert(send_rates)
            .values(name=name, tokens=capacity, updated_at=at)
            .on_conflict_do_nothing(index_elements=[send_rates.c.name])
        )
        row = (
            await conn.execute(_take(name=name, want=want, rate=rate, capacity=capacity, at=at))
        ).one()
    return Grant(granted=int(row.granted), tokens=float(row.tokens), at=row.updated_at)


def _take(
    *, name: str, want: int, rate: float, capacity: float, at: ColumnElement[datetime]
) -> Executable:
    """The one statement: lock the row, refill it to ``at``, take, return the grant."""
    old = (
        select(
            send_rates.c.name,
            send_rates.c.tokens,
            send_rates.c.updated_at,
            # Never before the row's time: a caller whose clock read came before
            # another's update (it waited for the lock) credits nothing twice.
            func.greatest(send_rates.c.updated_at, at).label("at"),
        )
        .where(send_rates.c.name == name)
        .with_for_update()
        .cte("old")
    )
    elapsed = cast(func.extract("epoch", old.c.at - old.c.updated_at), Float)
    refilled = select(
        old.c.name,
        old.c.at,
        func.least(literal(capacity, Float), old.c.tokens + literal(rate, Float) * elapsed).label(
            "tokens"
        ),
    ).cte("refilled")
    taken = select(
        refilled.c.name,
        refilled.c.at,
        refilled.c.tokens,
        cast(func.least(literal(want, Float), func.floor(refilled.c.tokens)), Integer).label(
            "granted"
        ),
    ).cte("taken")
    return (
        update(send_rates)
        .where(send_rates.c.name == taken.c.name)
        .values(tokens=taken.c.tokens - taken.c.granted, updated_at=taken.c.at)
        .returning(taken.c.granted, send_rates.c.tokens, send_rates.c.updated_at)
    )
