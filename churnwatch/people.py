"""``churnwatch people create|list|unlock``: the people who sign in to the workbench.

They live in ``outreach.people`` in the database at ``DATABASE_URL`` (run
``churnwatch migrate`` first). Passwords are read from standard input (one
line) or asked for at a prompt, never taken from the command line, and stored
as Argon2id hashes only (``services/outreach/workbench/accounts.py``).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.service import Person, Role, list_people, unlock
from services.outreach.workbench.accounts import create_person
from shared.db import in_transaction
from shared.settings import BaseServiceSettings

console = Console()

people_app = typer.Typer(help="People who sign in to the workbench (/ui).", no_args_is_help=True)


def _database_url() -> str:
    return BaseServiceSettings().database_url


def _read_password(password_stdin: bool) -> str:
    """The password: one line of stdin if asked (or stdin is not a terminal), else a prompt."""
    if password_stdin or not sys.stdin.isatty():
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise typer.BadParameter("no password given")
    return password


@people_app.command("create")
def create(
    person_id: Annotated[str, typer.Argument(help="The sign-in name.")],
    role: Annotated[Role, typer.Option(help="manager, team_lead or admin.")],
    name: Annotated[
        str | None, typer.Option(help="Display name (default: the sign-in name).")
    ] = None,
    manager_id: Annotated[
        str | None,
        typer.Option(help="The account manager id this person works as (managers: required)."),
    ] = None,
    team_lead: Annotated[
        str | None, typer.Option(help="Sign-in name of this person's team lead.")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a person; the password comes from stdin or a prompt."""
    password = _read_password(password_stdin)
    now = datetime.now(UTC)

    async def work(conn: AsyncConnection) -> Person:
        return await create_person(
            conn,
            person_id=person_id,
            password=password,
            role=role,
            now=now,
            display_name=name,
            manager_id=manager_id,
            team_lead_id=team_lead,
        )

    try:
        person = asyncio.run(in_transaction(_database_url(), work))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(f"created {person.person_id} ({person.role.value})")


@people_app.command("list")
def list_() -> None:
    """List the people (tab-separated, with a header line); never the password hashes."""
    print("person_id\tname\trole\tmanager_id\tteam_lead\tlocked_until\tdisabled")
    for p in asyncio.run(in_transaction(_database_url(), list_people)):
        fields = (
            p.person_id,
            p.display_name,
            p.role.value,
            p.manager_id or "-",
            p.team_lead_id or "-",
            p.locked_until.isoformat(timespec="seconds") if p.locked_until else "-",
            "yes" if p.disabled else "no",
        )
        print("\t".join(fields))


@people_app.command("unlock")
def unlock_(person_id: Annotated[str, typer.Argument(help="The sign-in name.")]) -> None:
    """Unlock an account locked by failed sign-ins (and clear its failure count)."""
    now = datetime.now(UTC)

    async def work(conn: AsyncConnection) -> bool:
        return await unlock(conn, person_id=person_id, now=now)

    if not asyncio.run(in_transaction(_database_url(), work)):
        console.print(f"no person {person_id!r}")
        raise typer.Exit(1)
    console.print(f"unlocked {person_id}")
