"""Outreach's tables (PostgreSQL schema ``outreach``)."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    Uuid,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import make_metadata

metadata = make_metadata("outreach")

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Uuid, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("status", String(16), nullable=False),
    Column("subscriber_id", String(64), nullable=False),
    Column("tier", String(16), nullable=False),
    Column("phone", String(16), nullable=True),
    Column("language", String(2), nullable=False),
    Column("account_manager_id", String(64), nullable=True),
    Column("rule", String(64), nullable=True),  # the alerting rule that made the task
    # 'am:<account manager id>' or a shared queue such as 'general'; calls only.
    Column("queue", String(80), nullable=True),
    # SMS template name; null means the template named after the kind.
    Column("template", String(64), nullable=True),
    Column("marketing", Boolean, nullable=False, server_default=false()),
    Column("monthly_value", Numeric(14, 4), nullable=True),
    Column("priority", Float, nullable=False),
    Column("risk", Float, nullable=True),
    # Nothing is done before this: the dispatcher does not send, the call queue hides it.
    Column("not_before", DateTime(timezone=True), nullable=True),
    Column("due_at", DateTime(timezone=True), nullable=True),
    Column("reasons", JSONB, nullable=False),
    Column("reason_codes", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    # Set by a 'close' update from alerting, e.g. 'won_back'.
    Column("outcome", String(32), nullable=True),
    Column("params", JSONB, nullable=False),
    Column("cause_event_id", Uuid, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
    Column("provider_message_id", String(128), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_tasks_subscriber_created", "subscriber_id", "created_at"),
    Index("ix_tasks_status_channel", "status", "channel"),
    Index("ix_tasks_created", "created_at", "task_id"),
    # The call queue filtered by queue: GET /v1/call-queue?queue=...
    Index("ix_tasks_queue_status", "queue", "status"),
    comment="Outreach tasks and their current state.",
)

task_transitions = Table(
    "task_transitions",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("task_id", Uuid, ForeignKey("outreach.tasks.task_id"), nullable=False, index=True),
    Column("from_status", String(16), nullable=True),
    Column("to_status", String(16), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("reason", Text, nullable=True),
    Column("at", DateTime(timezone=True), nullable=False),
    # The alerting TaskUpdate that caused this change, if any. Unique: an update
    # already applied (a redelivered batch) is recognised here and not applied again.
    Column("update_id", Uuid, nullable=True, unique=True),
    comment="Audit trail: every state change of every task, who/what, when and why.",
)
