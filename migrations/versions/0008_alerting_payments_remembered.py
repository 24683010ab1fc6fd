"""alerting.subscriber_facts.payments: the latest payments, for notices handled after them

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:10:00.000000

A stop-notice can be handled after the payment that clears it (the two came
through different entry points, or the notice was late); the payments
remembered here let the notice see it was paid.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: subscribers seen before this version remember no payment yet.
    op.add_column(
        "subscriber_facts",
        sa.Column(
            "payments",
            JSONB(),
            nullable=True,
            comment="[[occurred_at, amount], ...] of the latest payments, oldest first.",
        ),
        schema="alerting",
    )
    op.execute(
        "COMMENT ON TABLE alerting.subscriber_facts IS 'What the rules remember besides the "
        "profile: churned or not, the usual bill, the latest payments.'"
    )


def downgrade() -> None:
    op.drop_column("subscriber_facts", "payments", schema="alerting")
