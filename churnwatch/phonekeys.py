"""``churnwatch phone-keys``: which keys seal the stored phones, and moving them to PHONE_KEY.

Rotation (docs/security.md, "Phone numbers"): put the new key in ``PHONE_KEY``
and the old one in ``PHONE_OLD_KEYS`` for every service and this command,
restart, run ``churnwatch phone-keys rotate``, and drop the old key once
``churnwatch phone-keys status`` shows no value under it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Annotated

import typer
from rich.console import Console
from sqlalchemy import Column, Table, Text, cast, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerting.tables import subscribers
from services.outreach.tables import tasks
from shared.crypto import PhoneKeyring, PhoneKeySettings, UnknownPhoneKey, key_id_of
from shared.db import create_engine
from shared.settings import BaseServiceSettings

phone_keys_app = typer.Typer(help="Phone number keys: status and rotation.", no_args_is_help=True)
console = Console()


class PhoneKeyToolSettings(PhoneKeySettings, BaseServiceSettings):
    """The database and the phone keys, from the environment like a service's."""


# Every column that holds a phone, with its primary key and, if any, its lookup hash.
PHONE_COLUMNS: list[tuple[Table, Column[str], Column[str] | None]] = [
    (subscribers, subscribers.c.subscriber_id, None),
    (tasks, tasks.c.task_id, tasks.c.phone_hash),
]


def _name(table: Table) -> str:
    return f"{table.schema}.{table.name}.phone"


async def phone_key_status(engine: AsyncEngine) -> dict[str, Counter[str]]:
    """Per phone column, how many values each key id seals (``plain`` and ``v1`` apart)."""
    result: dict[str, Counter[str]] = {}
    async with engine.connect() as conn:
        for table, _, _ in PHONE_COLUMNS:
            stored = cast(table.c.phone, Text)  # the stored text, not the decrypting type
            counts: Counter[str] = Counter()
            for (value,) in await conn.execute(select(stored).where(stored.is_not(None))):
                key = key_id_of(value)
                counts[key or ("v1" if value.startswith("v1:") else "plain")] += 1
            result[_name(table)] = counts
    return result


async def reseal_phones(
    engine: AsyncEngine, keyring: PhoneKeyring, *, batch: int = 500
) -> dict[str, int]:
    """Seal every stored phone under the keyring's current key; per column, how many moved.

    Plain and ``v1:`` values are sealed too. Each batch is its own transaction,
    so a stop halfway loses nothing and a second run goes on where it stopped. A
    value under a key not in the ring raises :class:`shared.crypto.UnknownPhoneKey`.
    """
    moved: dict[str, int] = {}
    for table, pk, hash_column in PHONE_COLUMNS:
        stored = cast(table.c.phone, Text)  # the stored text, not the decrypting type
        done = 0
        last: object = None
        while True:
            async with engine.begin() as conn:
                query = select(pk, stored).where(stored.is_not(None)).order_by(pk).limit(batch)
                if last is not None:
                    query = query.where(pk > last)
                rows = (await conn.execute(query)).all()
                if not rows:
                    break
                for key, value in rows:
                    sealed = keyring.reseal(value)
                    if sealed is None:
                        continue
                    values: dict[str, str] = {"phone": sealed}  # sealed: the column keeps it
                    if hash_column is not None:
                        values[hash_column.name] = keyring.hash(keyring.decrypt(value))
                    # Only if unchanged since read: a concurrent write wins, it is sealed anew.
                    result = await conn.execute(
                        update(table).where(pk == key, stored == value).values(values)
                    )
                    done += result.rowcount
                last = rows[-1][0]
        moved[_name(table)] = done
    return moved


@phone_keys_app.command("status")
def status() -> None:
    """How many stored phones each key seals (rotation is done when only PHONE_KEY's are left)."""
    settings = PhoneKeyToolSettings()
    keyring = settings.phone_keyring()

    async def _run() -> dict[str, Counter[str]]:
        engine = create_engine(settings)
        try:
            return await phone_key_status(engine)
        finally:
            await engine.dispose()

    console.print(f"PHONE_KEY is key id {keyring.current.key_id}")
    for column, counts in asyncio.run(_run()).items():
        shown = ", ".join(f"{k}: {n}" for k, n in sorted(counts.items())) or "empty"
        console.print(f"{column:<28} {shown}")


@phone_keys_app.command("rotate")
def rotate(
    batch: Annotated[int, typer.Option(help="Rows per transaction.", min=1)] = 500,
) -> None:
    """Seal every stored phone under PHONE_KEY (values under PHONE_OLD_KEYS are opened)."""
    settings = PhoneKeyToolSettings()
    keyring = settings.phone_keyring()

    async def _run() -> dict[str, int]:
        engine = create_engine(settings)
        try:
            return await reseal_phones(engine, keyring, batch=batch)
        finally:
            await engine.dispose()

    try:
        result = asyncio.run(_run())
    except UnknownPhoneKey as exc:
        # Rows before the one that failed are moved already (each batch commits).
        console.print(f"[red]{exc}[/]; run it again once the key is there")
        raise typer.Exit(1) from exc
    for column, moved in result.items():
        console.print(f"{column:<28} {moved} moved to key id {keyring.current.key_id}")
