"""Alembic environment: async engine from DATABASE_URL, every service's metadata."""

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from services.alerting.tables import metadata as alerting_metadata
from services.outreach.tables import metadata as outreach_metadata
from services.scoring.tables import metadata as scoring_metadata
from shared.auth import metadata as auth_metadata
from shared.db import to_async_url

target_metadata = [scoring_metadata, alerting_metadata, outreach_metadata, auth_metadata]
SCHEMAS = ("scoring", "alerting", "outreach", "auth")


def _url() -> str:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        from shared.settings import BaseServiceSettings

        url = BaseServiceSettings().database_url
    return to_async_url(url)


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_schemas=True,
        include_name=lambda name, type_, _parent: type_ != "schema" or name in SCHEMAS,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, include_schemas=True
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
