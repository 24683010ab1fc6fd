"""People who sign in to the workbench: accounts, Argon2id passwords, lockout.

Functions are keyword-only and take a connection: the caller owns the
transaction. The rows are read and written by ``service.people``; here are the
checks and the passwords. Passwords are hashed with Argon2id (``argon2-cffi``'s
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

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.service import (
    Person,
    Role,
    get_person,
    insert_person,
    person_for_sign_in,
    person_of,
    person_with_manager_id,
    record_sign_in,
)

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "Person",
    "Role",
    "SignIn",
    "SignInResult",
    "create_person",
    "ensure_person",
    "hash_password",
    "hasher",
    "sign_in",
]

MIN_PASSWORD_LENGTH = 8
"""Shortest password ``create_person`` accepts."""


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
        taken = await person_with_manager_id(conn, manager_id=manager_id)
        if taken is not None:
            raise ValueError(f"manager id {manager_id!r} is already {taken!r}'s")
    if team_lead_id is not None:
        lead = await get_person(conn, person_id=team_lead_id)
        if lead is None or lead.role is not Role.TEAM_LEAD:
            raise ValueError(f"{team_lead_id!r} is not a team lead")
    password_hash = await asyncio.to_thread(hash_password, password)
    await insert_person(
        conn,
        person_id=person_id,
        display_name=display_name or person_id,
        role=role,
        manager_id=manager_id,
        team_lead_id=team_lead_id,
        password_hash=password_hash,
        now=now,
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
    row = await person_for_sign_in(conn, person_id=person_id)
    stored = row.password_hash if row is not None else _dummy_hash()
    matches = await asyncio.to_thread(_verify, stored, password)
    if row is None or row.disabled:
        return SignIn(SignInResult.FAILED)
    if row.locked_until is not None and row.locked_until > now:
        return SignIn(SignInResult.LOCKED, locked_until=row.locked_until)
    if not matches:
        failures = row.failed_sign_ins + 1
        locked = now + timedelta(seconds=lockout_s) if failures >= lockout_failures else None
        await record_sign_in(
            conn,
            person_id=person_id,
            failed_sign_ins=0 if locked else failures,
            locked_until=locked,
            now=now,
        )
        if locked is not None:
            return SignIn(SignInResult.LOCKED, locked_until=locked)
        return SignIn(SignInResult.FAILED)
    rehashed = None
    if hasher().check_needs_rehash(row.password_hash):
        rehashed = await asyncio.to_thread(hash_password, password)
    if row.failed_sign_ins or row.locked_until is not None or rehashed is not None:
        await record_sign_in(
            conn,
            person_id=person_id,
            failed_sign_ins=0,
            locked_until=None,
            now=now,
            password_hash=rehashed,
        )
    person = person_of(row)
    return SignIn(SignInResult.OK, person=person)
