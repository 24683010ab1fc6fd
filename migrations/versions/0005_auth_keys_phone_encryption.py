"""auth.api_keys; outreach phones encrypted with a lookup hash; outbox purge index

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 18:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A schema of its own: keys belong to no one service, every service reads them.
    op.execute("CREATE SCHEMA IF NOT EXISTS auth")
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("secret_sha256", sa.String(length=64), nullable=False),
        sa.Column("scopes", postgresql.ARRAY(sa.String(length=32)), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
        schema="auth",
        comment="API keys of the churnwatch HTTP APIs: hashed secrets and scopes.",
    )
    # Ciphertext is longer than a number. Existing rows stay readable as they are;
    # the outreach service encrypts them at its next start (it has the key, we do not).
    op.alter_column(
        "tasks",
        "phone",
        existing_type=sa.String(length=16),
        type_=sa.Text(),
        existing_nullable=True,
        schema="outreach",
    )
    op.add_column(
        "tasks", sa.Column("phone_hash", sa.String(length=64), nullable=True), schema="outreach"
    )
    op.create_index(
        op.f("ix_outreach_tasks_phone_hash"),
        "tasks",
        ["phone_hash"],
        unique=False,
        schema="outreach",
    )
    # For the retention purge of published rows (BRIN: published_at follows heap order).
    op.create_index(
        "ix_outbox_published_at",
        "outbox",
        ["published_at"],
        unique=False,
        schema="outreach",
        postgresql_using="brin",
    )
    # The same for the processed-id tables the purge reads every RETENTION_INTERVAL_S.
    op.create_index(
        "ix_processed_events_processed_at",
        "processed_events",
        ["processed_at"],
        unique=False,
        schema="scoring",
        postgresql_using="brin",
    )
    op.create_index(
        "ix_processed_messages_processed_at",
        "processed_messages",
        ["processed_at"],
        unique=False,
        schema="alerting",
        postgresql_using="brin",
    )


def downgrade() -> None:
    op.drop_index(
        "ix_processed_messages_processed_at", table_name="processed_messages", schema="alerting"
    )
    op.drop_index(
        "ix_processed_events_processed_at", table_name="processed_events", schema="scoring"
    )
    op.drop_index("ix_outbox_published_at", table_name="outbox", schema="outreach")
    # Encrypted numbers do not fit a String(16): a downgrade keeps the TEXT column.
    op.drop_index(op.f("ix_outreach_tasks_phone_hash"), table_name="tasks", schema="outreach")
    op.drop_column("tasks", "phone_hash", schema="outreach")
    op.drop_table("api_keys", schema="auth")
    op.execute("DROP SCHEMA IF EXISTS auth")
