"""initial tables

Revision ID: 0001
Revises:
Create Date: 2026-11-25 14:56:59.581149
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for schema in ("scoring", "alerting", "outreach"):
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    op.create_table(
        "features",
        sa.Column("subscriber_id", sa.String(length=64), nullable=False),
        sa.Column("state", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("events_applied", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscriber_id", name=op.f("pk_features")),
        schema="scoring",
        comment="Per-subscriber feature state, pending snapshot times and the latest score.",
    )
    op.create_index(
        op.f("ix_scoring_features_score"), "features", ["score"], unique=False, schema="scoring"
    )
    op.create_table(
        "model_checkpoints",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labels_seen", sa.Integer(), nullable=False),
        sa.Column("positives_seen", sa.Integer(), nullable=False),
        sa.Column("metrics", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("blob", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_checkpoints")),
        schema="scoring",
        comment="Versioned model checkpoints; a (re)started replica resumes from the latest.",
    )
    op.create_index(
        op.f("ix_scoring_model_checkpoints_name"),
        "model_checkpoints",
        ["name"],
        unique=False,
        schema="scoring",
    )
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_processed_events")),
        schema="scoring",
        comment="Event ids already applied: the idempotency key of the scoring consumer.",
    )
    op.create_table(
        "snapshots",
        sa.Column("subscriber_id", sa.String(length=64), nullable=False),
        sa.Column("taken_at", sa.Double(), nullable=False),
        sa.Column("features", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("predicted", sa.Double(), nullable=False),
        sa.Column("prior", sa.Double(), nullable=False),
        sa.Column("model", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("subscriber_id", "taken_at", name=op.f("pk_snapshots")),
        schema="scoring",
        comment="Feature snapshots waiting for their label (churn within the horizon or not).",
    )
    op.create_table(
        "processed_messages",
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_processed_messages")),
        schema="alerting",
        comment="event_id / score_id already handled: the alerting consumer's idempotency key.",
    )
    op.create_table(
        "subscribers",
        sa.Column("subscriber_id", sa.String(length=64), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("monthly_value", sa.Numeric(precision=14, scale=4), nullable=False),
        sa.Column("account_manager_id", sa.String(length=64), nullable=True),
        sa.Column("phone", sa.String(length=16), nullable=True),
        sa.Column("language", sa.String(length=2), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("preferred_channel", sa.String(length=8), nullable=False),
        sa.Column("marketing_opt_out", sa.Boolean(), nullable=False),
        sa.Column("profile_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("subscriber_id", name=op.f("pk_subscribers")),
        schema="alerting",
        comment="Latest subscriber profile, for routing tasks (newest occurred_at wins).",
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("subscriber_id", sa.String(length=64), nullable=False),
        sa.Column("cause_event_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_tasks")),
        schema="alerting",
        comment="Every task alerting has published (dedup and, later, cancellation).",
    )
    op.create_index(
        op.f("ix_alerting_tasks_subscriber_id"),
        "tasks",
        ["subscriber_id"],
        unique=False,
        schema="alerting",
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("subscriber_id", sa.String(length=64), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("phone", sa.String(length=16), nullable=True),
        sa.Column("language", sa.String(length=2), nullable=False),
        sa.Column("account_manager_id", sa.String(length=64), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reasons", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("cause_event_id", sa.Uuid(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("provider_message_id", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_tasks")),
        schema="outreach",
        comment="Outreach tasks and their current state.",
    )
    op.create_index(
        "ix_tasks_created", "tasks", ["created_at", "task_id"], unique=False, schema="outreach"
    )
    op.create_index(
        "ix_tasks_status_channel", "tasks", ["status", "channel"], unique=False, schema="outreach"
    )
    op.create_index(
        "ix_tasks_subscriber_created",
        "tasks",
        ["subscriber_id", "created_at"],
        unique=False,
        schema="outreach",
    )
    op.create_table(
        "task_transitions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["outreach.tasks.task_id"], name=op.f("fk_task_transitions_task_id_tasks")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_transitions")),
        schema="outreach",
        comment="Audit trail: every state change of every task, who/what, when and why.",
    )
    op.create_index(
        op.f("ix_outreach_task_transitions_task_id"),
        "task_transitions",
        ["task_id"],
        unique=False,
        schema="outreach",
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_outreach_task_transitions_task_id"),
        table_name="task_transitions",
        schema="outreach",
    )
    op.drop_table("task_transitions", schema="outreach")
    op.drop_index("ix_tasks_subscriber_created", table_name="tasks", schema="outreach")
    op.drop_index("ix_tasks_status_channel", table_name="tasks", schema="outreach")
    op.drop_index("ix_tasks_created", table_name="tasks", schema="outreach")
    op.drop_table("tasks", schema="outreach")
    op.drop_index(op.f("ix_alerting_tasks_subscriber_id"), table_name="tasks", schema="alerting")
    op.drop_table("tasks", schema="alerting")
    op.drop_table("subscribers", schema="alerting")
    op.drop_table("processed_messages", schema="alerting")
    op.drop_table("snapshots", schema="scoring")
    op.drop_table("processed_events", schema="scoring")
    op.drop_index(
        op.f("ix_scoring_model_checkpoints_name"), table_name="model_checkpoints", schema="scoring"
    )
    op.drop_table("model_checkpoints", schema="scoring")
    op.drop_index(op.f("ix_scoring_features_score"), table_name="features", schema="scoring")
    op.drop_table("features", schema="scoring")
    for schema in ("outreach", "alerting", "scoring"):
        op.execute(f"DROP SCHEMA IF EXISTS {schema}")
