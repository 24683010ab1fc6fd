"""outreach: task fields of the new tasks contract, task updates

The new OutreachTask fields (rule, queue, template, marketing, value, risk,
not_before, reason codes), the outcome a close records, a float priority, and
the update id that makes each TaskUpdate apply once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 16:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tasks", sa.Column("rule", sa.String(length=64), nullable=True), schema="outreach"
    )
    op.add_column(
        "tasks", sa.Column("queue", sa.String(length=80), nullable=True), schema="outreach"
    )
    op.add_column(
        "tasks", sa.Column("template", sa.String(length=64), nullable=True), schema="outreach"
    )
    op.add_column(
        "tasks",
        sa.Column("marketing", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        schema="outreach",
    )
    op.add_column(
        "tasks",
        sa.Column("monthly_value", sa.Numeric(precision=14, scale=4), nullable=True),
        schema="outreach",
    )
    op.add_column("tasks", sa.Column("risk", sa.Float(), nullable=True), schema="outreach")
    op.add_column(
        "tasks",
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        schema="outreach",
    )
    op.add_column(
        "tasks",
        sa.Column(
            "reason_codes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        schema="outreach",
    )
    op.add_column(
        "tasks", sa.Column("outcome", sa.String(length=32), nullable=True), schema="outreach"
    )
    op.alter_column(
        "tasks",
        "priority",
        existing_type=sa.Integer(),
        type_=sa.Float(),
        existing_nullable=False,
        schema="outreach",
    )
    op.create_index(
        "ix_tasks_queue_status", "tasks", ["queue", "status"], unique=False, schema="outreach"
    )
    op.add_column(
        "task_transitions", sa.Column("update_id", sa.Uuid(), nullable=True), schema="outreach"
    )
    op.create_unique_constraint(
        op.f("uq_task_transitions_update_id"), "task_transitions", ["update_id"], schema="outreach"
    )


def downgrade() -> None:
    op.drop_constraint(
        op.f("uq_task_transitions_update_id"), "task_transitions", schema="outreach", type_="unique"
    )
    op.drop_column("task_transitions", "update_id", schema="outreach")
    op.drop_index("ix_tasks_queue_status", table_name="tasks", schema="outreach")
    op.alter_column(
        "tasks",
        "priority",
        existing_type=sa.Float(),
        type_=sa.Integer(),
        existing_nullable=False,
        postgresql_using="round(priority)::integer",
        schema="outreach",
    )
    for column in (
        "outcome",
        "reason_codes",
        "not_before",
        "risk",
        "monthly_value",
        "marketing",
        "template",
        "queue",
        "rule",
    ):
        op.drop_column("tasks", column, schema="outreach")
