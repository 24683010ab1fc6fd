"""outreach.tasks.traceparent: the trace of the event that made the task

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 17:20:00.000000

Issue 21: with tracing on (shared/tracing.py), the SMS dispatcher sends a task
minutes or hours after the consumer stored it, from PostgreSQL, not from the
Kafka record: the task keeps its cause's W3C ``traceparent`` so the send's span
joins that event's trace. NULL with tracing off, and for tasks made by hand.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "outreach"


def upgrade() -> None:
    # Nullable, no default: a metadata-only change, instant on a large table.
    op.add_column(
        "tasks",
        sa.Column("traceparent", sa.String(55), nullable=True),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_column("tasks", "traceparent", schema=SCHEMA)
