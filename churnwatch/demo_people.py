"""The workbench's demo accounts of ``make run``: a team lead and one sign-in per manager.

The simulated account managers (``churnwatch.agents``) work the queues through
the API; these accounts let a person look at the same work in the browser:
``lead`` sees the team page with every manager, ``am-001``... each see their
own day. One password for all, random, made once per data directory and kept
beside the dev API key (``<data dir>/workbench-demo-password``): demo
accounts on a developer's machine, never created by anything in production.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.workbench import Role, ensure_person
from shared.db import in_transaction

LEAD = "lead"
"""The demo team lead's sign-in name."""


@dataclass(frozen=True)
class DemoAccounts:
    """Who can sign in, and with what."""

    lead: str
    managers: list[str]
    password: str


def person_for(manager_id: str) -> str:
    """The sign-in name of the manager ``AM-001``: ``am-001``."""
    return manager_id.lower()


def _password(path: Path) -> str:
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    password = secrets.token_urlsafe(12)
    path.write_text(password + "\n", encoding="utf-8")
    path.chmod(0o600)
    return password


async def _ensure(conn: AsyncConnection, manager_ids: list[str], password: str) -> None:
    now = datetime.now(UTC)
    await ensure_person(
        conn,
        person_id=LEAD,
        password=password,
        role=Role.TEAM_LEAD,
        now=now,
        display_name="Team lead (demo)",
    )
    for manager_id in manager_ids:
        await ensure_person(
            conn,
            person_id=person_for(manager_id),
            password=password,
            role=Role.MANAGER,
            now=now,
            display_name=f"Account manager {manager_id} (demo)",
            manager_id=manager_id,
            team_lead_id=LEAD,
        )


def ensure_demo_accounts(database_url: str, manager_ids: list[str], data_dir: Path) -> DemoAccounts:
    """Create the demo accounts that do not exist yet; return how to sign in."""
    password = _password(data_dir / "workbench-demo-password")
    asyncio.run(in_transaction(database_url, lambda conn: _ensure(conn, manager_ids, password)))
    return DemoAccounts(LEAD, [person_for(m) for m in manager_ids], password)
