"""The workbench's people in the database: their rows, sign-in failures and lockouts.

``outreach.people`` holds who may sign in to the workbench, their role, the
account manager id they work as and the Argon2id hash of their password. The
hashing and the sign-in's checks are the workbench's (``workbench/accounts.py``);
these functions read and write the rows, in the caller's transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.tables import people


class Role(StrEnum):
    """What a person may see: their own subscribers, their team's, or everything."""

    MANAGER = "manager"
    TEAM_LEAD = "team_lead"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Person:
    """A person as the pages need them (never the password hash)."""

    person_id: str
    display_name: str
    role: Role
    manager_id: str | None
    team_lead_id: str | None
    disabled: bool = False
    locked_until: datetime | None = None
    failed_sign_ins: int = 0

    @property
    def agent_id(self) -> str:
        """The id a claimed call is assigned to: the manager id this person works as."""
        return self.manager_id or self.person_id


def person_of(row: Any) -> Person:
    """The ``Person`` of a row holding ``outreach.people``'s columns."""
    return Person(
        person_id=row.person_id,
        display_name=row.display_name,
        role=Role(row.role),
        manager_id=row.manager_id,
        team_lead_id=row.team_lead_id,
        disabled=row.disabled,
        locked_until=row.locked_until,
        failed_sign_ins=row.failed_sign_ins,
    )


async def get_person(conn: AsyncConnection, *, person_id: str) -> Person | None:
    """The person, or None."""
    row = (await conn.execute(select(people).where(people.c.person_id == person_id))).first()
    return None if row is None else person_of(row)


async def list_people(conn: AsyncConnection) -> list[Person]:
    """Everyone, by sign-in name."""
    rows = await conn.execute(select(people).order_by(people.c.person_id))
    return [person_of(r) for r in rows]


async def person_with_manager_id(conn: AsyncConnection, *, manager_id: str) -> str | None:
    """The sign-in name of the person working as ``manager_id``, or None."""
    person_id: str | None = await conn.scalar(
        select(people.c.person_id).where(people.c.manager_id == manager_id)
    )
    return person_id


async def insert_person(
    conn: AsyncConnection,
    *,
    person_id: str,
    display_name: str,
    role: Role,
    manager_id: str | None,
    team_lead_id: str | None,
    password_hash: str,
    now: datetime,
) -> None:
    """Store a new person; the caller checked the account and hashed the password."""
    await conn.execute(
        people.insert().values(
            person_id=person_id,
            display_name=display_name,
            role=role.value,
            manager_id=manager_id,
            team_lead_id=team_lead_id,
            password_hash=password_hash,
            created_at=now,
            updated_at=now,
        )
    )


async def unlock(conn: AsyncConnection, *, person_id: str, now: datetime) -> bool:
    """Clear a lockout and the failure count; False if there is no such person."""
    result = await conn.execute(
        update(people)
        .where(people.c.person_id == person_id)
        .values(failed_sign_ins=0, locked_until=None, updated_at=now)
    )
    return bool(result.rowcount)


async def person_for_sign_in(conn: AsyncConnection, *, person_id: str) -> Row[Any] | None:
    """The person's row with its password hash, or None.

    Locked (``FOR UPDATE``) until the transaction ends, so two sign-ins at once
    count their failures one after the other.
    """
    return (
        await conn.execute(select(people).where(people.c.person_id == person_id).with_for_update())
    ).first()


async def record_sign_in(
    conn: AsyncConnection,
    *,
    person_id: str,
    failed_sign_ins: int,
    locked_until: datetime | None,
    now: datetime,
    password_hash: str | None = None,
) -> None:
    """Store a sign-in's effect: the failures in a row, the lock's end, a rehashed password."""
    values: dict[str, Any] = {"failed_sign_ins": failed_sign_ins, "locked_until": locked_until}
    if password_hash is not None:
        values["password_hash"] = password_hash
    await conn.execute(
        update(people).where(people.c.person_id == person_id).values(**values, updated_at=now)
    )
