"""``churnwatch keys create|list|revoke``: the API keys of the churnwatch HTTP APIs.

The keys live in ``auth.api_keys`` (``shared.auth``) in the database at
``DATABASE_URL``; run ``churnwatch migrate`` first. A new key is printed once;
only the hash of its secret is stored, so a lost key cannot be shown again:
revoke it and create another.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from shared.auth import SCOPES, ApiKey, create_key, get_key, key_matches, list_keys, revoke_key
from shared.db import in_transaction
from shared.settings import BaseServiceSettings

console = Console()

keys_app = typer.Typer(help="API keys of the churnwatch HTTP APIs.", no_args_is_help=True)


def api_headers(api_key: str | None = None) -> dict[str, str]:
    """The auth header a churnwatch command sends: ``api_key``, else ``CHURNWATCH_API_KEY``."""
    key = api_key or os.environ.get("CHURNWATCH_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


DEV_KEY_NAME = "dev (churnwatch up)"
"""Name of the all-scopes key ``churnwatch up`` creates for its own calls."""


async def _create(database_url: str, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
    return await in_transaction(
        database_url,
        lambda conn: create_key(conn, name=name, scopes=scopes, now=datetime.now(UTC)),
    )


async def _list(database_url: str, include_revoked: bool) -> list[ApiKey]:
    return await in_transaction(
        database_url, lambda conn: list_keys(conn, include_revoked=include_revoked)
    )


async def _revoke(database_url: str, key_id: str) -> bool:
    return await in_transaction(
        database_url, lambda conn: revoke_key(conn, key_id=key_id, now=datetime.now(UTC))
    )


async def _valid(database_url: str, token: str) -> bool:
    key = await in_transaction(database_url, lambda conn: get_key(conn, key_id=token[3:15]))
    return key is not None and key_matches(key, token) and key.scopes == frozenset(SCOPES)


def ensure_dev_key(database_url: str, path: Path) -> str:
    """The all-scopes key of ``churnwatch up``: the one saved at ``path`` if still valid, else new.

    The file (mode 0600, beside the embedded database) is what lets a restarted
    ``up`` reuse its key, since the database holds only the hash.
    """
    if path.is_file():
        saved = path.read_text(encoding="utf-8").strip()
        if saved and asyncio.run(_valid(database_url, saved)):
            return saved
    _, token = asyncio.run(_create(database_url, DEV_KEY_NAME, list(SCOPES)))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Create it private, rather than chmod after writing the secret.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token


def _database_url() -> str:
    return BaseServiceSettings().database_url


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option(help="Who uses the key, e.g. billing.")],
    scope: Annotated[
        list[str],
        typer.Option(help=f"A scope (repeat for several): {', '.join(SCOPES)}."),
    ],
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    try:
        key, token = asyncio.run(_create(_database_url(), name, scope))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(
        f"key id  {key.key_id}\nname    {key.name}\nscopes  {' '.join(sorted(key.scopes))}"
    )
    console.print("the key (shown once; send it as 'Authorization: Bearer <key>'):")
    # Plain print: rich would wrap or colour it, and scripts capture this line.
    print(token)


@keys_app.command("list")
def list_(
    all_: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List the keys: id, name, scopes, dates. Never the secrets.

    Tab-separated with a header line (not a rich table): it never wraps, and
    scripts can cut it.
    """
    print("key_id\tname\tscopes\tcreated\tlast_used\trevoked")
    for key in asyncio.run(_list(_database_url(), all_)):
        fields = (
            key.key_id,
            key.name,
            ",".join(s for s in SCOPES if s in key.scopes),
            key.created_at.isoformat(timespec="seconds"),
            key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "-",
            key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else "-",
        )
        print("\t".join(fields))


@keys_app.command("revoke")
def revoke(key_id: Annotated[str, typer.Argument(help="The key id (from keys list).")]) -> None:
    """Revoke a key; services refuse it within AUTH_CACHE_TTL_S seconds."""
    if not asyncio.run(_revoke(_database_url(), key_id)):
        console.print(f"no unrevoked key with id {key_id!r}")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")
