"""PostgreSQL plumbing: the async engine, and one transaction per unit of work.

Services own their tables in a PostgreSQL schema of their own (``scoring``,
``alerting``, ``outreach``); ``migrations/`` (alembic) creates them.
"""

from __future__ import annotations

from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

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


def create_engine(settings: BaseServiceSettings) -> AsyncEngine:
    """The service's engine; ``pool_pre_ping`` survives a database restart."""
    return create_async_engine(
        to_async_url(settings.database_url),
        pool_size=settings.database_pool_size,
        pool_pre_ping=True,
    )


async def ping(engine: AsyncEngine) -> bool:
    """True if the database answers ``SELECT 1``."""
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
