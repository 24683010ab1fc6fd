"""alerting.subscriber_facts.activity: recent bills, payments, stop-notices, complaints

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 09:00:00.000000

Issue 19: the workbench's subscriber card shows a subscriber's recent bills,
payments, stop-notices and complaints; alerting sees those events already and
keeps the newest of each here (services/alerting/activity.py), served at
GET /v1/subscribers/{subscriber_id}/activity.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: subscribers seen before this version have no activity remembered yet.
    op.add_column(
        "subscriber_facts",
        sa.Column(
            "activity",
            JSONB(),
            nullable=True,
            comment="Recent bills, payments, stop-notices and complaints, for the subscriber card.",
        ),
        schema="alerting",
    )
    op.execute(
        "COMMENT ON TABLE alerting.subscriber_facts IS 'What the rules remember besides the "
        "profile: churned or not, the usual bill, the latest payments, recent activity.'"
    )


def downgrade() -> None:
    op.drop_column("subscriber_facts", "activity", schema="alerting")
    op.execute(
        "COMMENT ON TABLE alerting.subscriber_facts IS 'What the rules remember besides the "
        "profile: churned or not, the usual bill, the latest payments.'"
    )
