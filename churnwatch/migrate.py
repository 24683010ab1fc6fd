"""Run the alembic migrations programmatically (``churnwatch migrate``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations


def alembic_config(database_url: str) -> Config:
    """An alembic config pointing at the packaged migrations and the given database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # '%' must be doubled for configparser interpolation (passwords may contain it).
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database to ``revision`` (blocking; runs its own event loop)."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    """``upgrade`` from inside a running event loop (alembic's env runs its own loop)."""
    await asyncio.to_thread(upgrade, database_url, revision)
