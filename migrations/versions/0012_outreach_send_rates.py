"""outreach.send_rates: one SMS send rate for the whole deployment

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 17:10:00.000000

Issue 21: ``SMS_RATE_LIMIT_PER_S`` was a token bucket in each outreach
process, so two replicas sent at twice the provider's contracted rate. The
bucket is now a row here that every replica takes its tokens from in one
atomic statement (services/outreach/service/rate.py), refilled on the
database's clock. The row is made by the first replica that needs it.

``fillfactor`` 50: the row is rewritten tens of times a second at full rate;
room on its page keeps each update heap-only (no new index entry), and
autovacuum clears the dead versions.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "outreach"


def upgrade() -> None:
    op.create_table(
        "send_rates",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_send_rates")),
        schema=SCHEMA,
        comment="Token buckets shared by every outreach replica: one send rate per deployment.",
        postgresql_with={"fillfactor": 50},
    )


def downgrade() -> None:
    op.drop_table("send_rates", schema=SCHEMA)
