"""People who sign in to the workbench: accounts, Argon2id passwords, lockout.

Service functions are keyword-only and take a connection: the caller owns the
transaction. Passwords are hashed with Argon2id (``argon2-cffi``'s
``PasswordHasher``, its parameters and salt kept in the hash string). After
``WORKBENCH_LOCKOUT_FAILURES`` failed sign-ins in a row an account is locked for
``WORKBENCH_LOCKOUT_S``; an unknown name costs the same hash verification as a
known one, so timing does not tell which names exist.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.tables import people

MIN_PASSWORD_LENGTH = 8
"""Shortest password ``create_person`` accepts."""


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


class SignInResult(StrEnum):
    """How a sign-in attempt ended."""

    OK = "ok"
    FAILED = "failed"  # unknown name, wrong password or disabled: one answer for all
    LOCKED = "locked"


@dataclass(frozen=True, slots=True)
class SignIn:
    """A sign-in's result, the person when it succeeded, and until when a lock holds."""

    result: SignInResult
    person: Person | None = None
    locked_until: datetime | None = None


@cache
def hasher() -> PasswordHasher:
    """The Argon2id hasher (argon2-cffi's recommended parameters)."""
    return PasswordHasher()


@cache
def _dummy_hash() -> str:
    """A hash to verify against when the name is unknown (same cost as a real one)."""
    return hasher().hash("not-a-real-password-for-timing")


def hash_password(password: str) -> str:
    """The Argon2id hash string of ``password``."""
    return hasher().hash(password)


def _verify(stored: str, password: str) -> bool:
    try:
        return hasher().verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


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


async def create_person(
    conn: AsyncConnection,
    *,
    person_id: str,
    password: str,
    role: Role | str,
    now: datetime,
    display_name: str | None = None,
    manager_id: str | None = None,
    team_lead_id: str | None = None,
) -> Person:
    """Create a person who can sign in; ``ValueError`` for a bad or duplicate account.

    A manager needs ``manager_id`` (the account manager id on their tasks);
    ``team_lead_id`` must name an existing team lead.
    """
    role = Role(role)
    if not person_id or len(person_id) > 64 or not person_id.isprintable() or " " in person_id:
        raise ValueError("the sign-in name must be 1-64 printable characters without spaces")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if role is Role.MANAGER and not manager_id:
        raise ValueError("a manager needs --manager-id (the account manager id on their tasks)")
    if await get_person(conn, person_id=person_id) is not None:
        raise ValueError(f"{person_id!r} already exists")
    if manager_id is not None:
        taken = await conn.scalar(
            select(people.c.person_id).where(people.c.manager_id == manager_id)
        )
        if taken is not None:
            raise ValueError(f"manager id {manager_id!r} is already {taken!r}'s")
    if team_lead_id is not None:
        lead = await get_person(conn, person_id=team_lead_id)
        if lead is None or lead.role is not Role.TEAM_LEAD:
            raise ValueError(f"{team_lead_id!r} is not a team lead")
    password_hash = await asyncio.to_thread(hash_password, password)
    await conn.execute(
        people.insert().values(
            person_id=person_id,
            display_name=display_name or person_id,
            role=role.value,
            manager_id=manager_id,
            team_lead_id=team_lead_id,
            password_hash=password_hash,
            created_at=now,
            updated_at=now,
        )
    )
    person = await get_person(conn, person_id=person_id)
    assert person is not None
    return person


async def ensure_person(
    conn: AsyncConnection,
    *,
    person_id: str,
    password: str,
    role: Role | str,
    now: datetime,
    display_name: str | None = None,
    manager_id: str | None = None,
    team_lead_id: str | None = None,
) -> Person:
    """The person if they exist (left as they are), else ``create_person`` (demo accounts)."""
    existing = await get_person(conn, person_id=person_id)
    if existing is not None:
        return existing
    return await create_person(
        conn,
        person_id=person_id,
        password=password,
        role=role,
        now=now,
        display_name=display_name,
        manager_id=manager_id,
        team_lead_id=team_lead_id,
    )


async def get_person(conn: AsyncConnection, *, person_id: str) -> Person | None:
    """The person, or None."""
    row = (await conn.execute(select(people).where(people.c.person_id == person_id))).first()
    return None if row is None else person_of(row)


async def list_people(conn: AsyncConnection) -> list[Person]:
    """Everyone, by sign-in name."""
    rows = await conn.execute(select(people).order_by(people.c.person_id))
    return [person_of(r) for r in rows]


async def unlock(conn: AsyncConnection, *, person_id: str, now: datetime) -> bool:
    """Clear a lockout and the failure count; False if there is no such person."""
    result = await conn.execute(
        update(people)
        .where(people.c.person_id == person_id)
        .values(failed_sign_ins=0, locked_until=None, updated_at=now)
    )
    return bool(result.rowcount)


async def sign_in(
    conn: AsyncConnection,
    *,
    person_id: str,
    password: str,
    now: datetime,
    lockout_failures: int,
    lockout_s: float,
) -> SignIn:
    """Check a sign-in; count failures and lock the account after ``lockout_failures``.

    A locked account is refused even with the right password, until the lock
    ends. The hash is always verified (against a dummy for an unknown name).
    """
    row = (
        await conn.execute(select(people).where(people.c.person_id == person_id).with_for_update())
    ).first()
    stored = row.password_hash if row is not None else _dummy_hash()
    matches = await asyncio.to_thread(_verify, stored, password)
    if row is None or row.disabled:
        return SignIn(SignInResult.FAILED)
    if row.locked_until is not None and row.locked_until > now:
        return SignIn(SignInResult.LOCKED, locked_until=row.locked_until)
    if not matches:
        failures = row.failed_sign_ins + 1
        locked = now + timedelta(seconds=lockout_s) if failures >= lockout_failures else None
        await conn.execute(
            update(people)
            .where(people.c.person_id == person_id)
            .values(
                failed_sign_ins=0 if locked else failures,
                locked_until=locked,
                updated_at=now,
            )
        )
        if locked is not None:
            return SignIn(SignInResult.LOCKED, locked_until=locked)
        return SignIn(SignInResult.FAILED)
    values: dict[str, Any] = {"failed_sign_ins": 0, "locked_until": None}
    if hasher().check_needs_rehash(row.password_hash):
        values["password_hash"] = await asyncio.to_thread(hash_password, password)
    if row.failed_sign_ins or row.locked_until is not None or "password_hash" in values:
        await conn.execute(
            update(people).where(people.c.person_id == person_id).values(**values, updated_at=now)
        )
    person = person_of(row)
    return SignIn(SignInResult.OK, person=person)
