"""PostgreSQL plumbing: the async engine, and one transaction per unit of work.

Services own their tables in a PostgreSQL schema of their own (``scoring``,
``alerting``, ``outreach``); ``migrations/`` (alembic) creates them.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import DateTime, MetaData, Table, bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from shared.settings import BaseServiceSettings

# Stable constraint names, so alembic migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def make_metadata(schema: str) -> MetaData:
    """Metadata for one service's tables, in that service's PostgreSQL schema."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def to_async_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs too, and use the asyncpg driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def connect_args(settings: BaseServiceSettings) -> dict[str, Any]:
    """Connection arguments (asyncpg) for ``DATABASE_SSLMODE`` / ``DATABASE_SSL_ROOTCERT``.

    The modes mean what they mean to libpq. asyncpg takes the mode names as they
    are; only the verifying modes with our own CA bundle need an ``SSLContext``
    (``verify-ca`` checks the chain but not the host name).
    """
    mode = settings.database_sslmode
    if mode is None:
        return {}
    if mode in ("verify-ca", "verify-full") and settings.database_ssl_rootcert:
        context = ssl.create_default_context(cafile=settings.database_ssl_rootcert)
        context.check_hostname = mode == "verify-full"
        return {"ssl": context}
    return {"ssl": mode}


def create_engine(settings: BaseServiceSettings) -> AsyncEngine:
    """The service's engine; ``pool_pre_ping`` survives a database restart."""
    return create_async_engine(
        to_async_url(settings.database_url),
        connect_args=connect_args(settings),
        pool_size=settings.database_pool_size,
        pool_pre_ping=True,
        # orjson for JSONB columns: several times faster than json on feature states.
        json_serializer=lambda obj: orjson.dumps(obj).decode(),
        json_deserializer=orjson.loads,
    )


async def in_transaction(database_url: str, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on a short-lived engine (the command-line tools).

    The engine is disposed of afterwards, so a command leaves no connection open.
    """
    engine = create_engine(BaseServiceSettings(database_url=database_url))
    try:
        async with engine.begin() as conn:
            return await work(conn)
    finally:
        await engine.dispose()


async def ping(engine: AsyncEngine) -> bool:
    """True if the database answers ``SELECT 1``."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


T = TypeVar("T")


async def keep_new(
    conn: AsyncConnection,
    *,
    table: Table,
    items: Sequence[T],
    key: Callable[[T], uuid.UUID],
    now: datetime,
) -> list[T]:
    """Record the items' natural keys in ``table``; return the items never seen before.

    The idempotency step of every handler: ``table`` has the key as primary key
    and a ``processed_at`` column. Inside the handler's transaction, an
    ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` tells which keys are new; a
    key repeated within ``items`` counts once (its first occurrence).
    """
    if not items:
        return []
    column = table.primary_key.columns.values()[0]
    ids = list(dict.fromkeys(key(item) for item in items))
    # One array parameter, unnested by PostgreSQL: a few microseconds per key, where
    # one parameter set per key costs SQLAlchemy and asyncpg far more.
    ids_param = bindparam("ids", type_=ARRAY(column.type))
    statement = (
        insert(table)
        .from_select(
            [column.name, "processed_at"],
            select(func.unnest(ids_param), bindparam("now", type_=DateTime(True))),
        )
        .on_conflict_do_nothing(index_elements=[column.name])
        .returning(column)
    )
    rows = await conn.execute(statement, {"ids": ids, "now": now})
    fresh = set(rows.scalars())
    new: list[T] = []
    for item in items:
        if key(item) in fresh:
            fresh.discard(key(item))
            new.append(item)
    return new
