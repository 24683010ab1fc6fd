"""alerting.subscribers.phone sealed (v2:<key id>:...) like every phone at rest

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 23:40:00.000000

The column becomes TEXT (a sealed value is longer than a number) and every plain
number in it is sealed under the current phone key, read from the environment
as the services read it (``PHONE_KEY``, or its older name ``OUTREACH_PHONE_KEY``;
the development key when neither is set outside production). With
``ENVIRONMENT=production`` and no key, the migration stops if there is a plain
number to seal, naming the setting: it never seals under the public development
key. Without plain numbers no key is needed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from shared.crypto import ENCRYPTED_PREFIXES, PhoneKeySettings

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 1000

_subscribers = sa.table(
    "subscribers",
    sa.column("subscriber_id", sa.String()),
    sa.column("phone", sa.Text()),
    schema="alerting",
)


def _rows(where: sa.ColumnElement[bool]) -> list[tuple[str, str]]:
    query = (
        sa.select(_subscribers.c.subscriber_id, _subscribers.c.phone)
        .where(_subscribers.c.phone.is_not(None), where)
        .order_by(_subscribers.c.subscriber_id)
        .limit(BATCH)
    )
    return [(row[0], row[1]) for row in op.get_bind().execute(query)]


def upgrade() -> None:
    op.alter_column(
        "subscribers",
        "phone",
        existing_type=sa.String(length=16),
        type_=sa.Text(),
        existing_nullable=True,
        schema="alerting",
    )
    plain = sa.func.left(_subscribers.c.phone, 3).not_in(ENCRYPTED_PREFIXES)
    rows = _rows(plain)
    if not rows:
        return
    # Only now: a database without plain numbers migrates without any key.
    keyring = PhoneKeySettings().phone_keyring()
    while rows:
        for subscriber_id, phone in rows:
            op.get_bind().execute(
                sa.update(_subscribers)
                .where(_subscribers.c.subscriber_id == subscriber_id)
                .values(phone=keyring.encrypt(phone))
            )
        rows = _rows(plain)


def downgrade() -> None:
    # Version 0006 stores and publishes plain numbers: open them (with the keys of
    # PHONE_KEY / PHONE_OLD_KEYS) so it can read them again, then narrow the column.
    keyring = None
    last = ""
    while True:
        rows = _rows(_subscribers.c.subscriber_id > last)
        if not rows:
            break
        for subscriber_id, phone in rows:
            if phone.startswith(ENCRYPTED_PREFIXES):
                keyring = keyring or PhoneKeySettings().phone_keyring()
                op.get_bind().execute(
                    sa.update(_subscribers)
                    .where(_subscribers.c.subscriber_id == subscriber_id)
                    .values(phone=keyring.decrypt(phone))
                )
        last = rows[-1][0]
    op.alter_column(
        "subscribers",
        "phone",
        existing_type=sa.Text(),
        type_=sa.String(length=16),
        existing_nullable=True,
        schema="alerting",
    )
