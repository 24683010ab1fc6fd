"""Phone numbers at rest: finding subscribers by phone, encrypting phones stored plain."""

from __future__ import annotations

from sqlalchemy import Text, cast, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.outreach.tables import tasks
from shared.crypto import ENCRYPTED_PREFIXES, phone_hash, phone_keyring


async def subscribers_with_phone(conn: AsyncConnection, *, phone: str) -> list[str]:
    """Every subscriber whose tasks carry this phone number (an inbound reply's sender).

    Phones are stored encrypted, each differently: the keyed hash column (indexed)
    is what can be compared; under every key of the ring, so rows not yet moved to
    a new key (churnwatch phone-keys rotate) are found too.
    """
    hashes = phone_keyring().hashes(phone)
    rows = await conn.execute(
        select(tasks.c.subscriber_id).where(tasks.c.phone_hash.in_(hashes)).distinct()
    )
    return sorted(rows.scalars())


async def encrypt_plain_phones(conn: AsyncConnection, *, batch: int = 1000) -> int:
    """Encrypt up to ``batch`` phones stored before encryption; return how many.

    Migration 0005 cannot (it has no key): the outreach app calls this at start
    until it returns 0. Reading a plain row works meanwhile (see shared.crypto).
    """
    raw = cast(tasks.c.phone, Text)  # the stored text, not the decrypting column type
    rows = (
        await conn.execute(
            select(tasks.c.task_id, raw.label("stored"))
            .where(
                raw.is_not(None),
                # Sealed values (v1: before the keyring, v2: now) are not plain.
                func.left(raw, 3).not_in(ENCRYPTED_PREFIXES),
            )
            .limit(batch)
        )
    ).all()
    for row in rows:
        await conn.execute(
            update(tasks)
            .where(tasks.c.task_id == row.task_id)
            .values(phone=row.stored, phone_hash=phone_hash(row.stored))
        )
    return len(rows)
