"""Alerting's tables (PostgreSQL schema ``alerting``)."""

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import make_metadata

metadata = make_metadata("alerting")

processed_messages = Table(
    "processed_messages",
    metadata,
    Column("message_id", Uuid, primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    # For the retention purge; BRIN because processed_at follows insertion order.
    Index("ix_processed_messages_processed_at", "processed_at", postgresql_using="brin"),
    comment="event_id / score_id already handled: the alerting consumer's idempotency key.",
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("subscriber_id", String(64), primary_key=True),
    Column("tier", String(16), nullable=False),
    Column("monthly_value", Numeric(14, 4), nullable=False),
    Column("account_manager_id", String(64), nullable=True),
    # Sealed ('v2:<key id>:...', shared.crypto) as it came off Kafka: alerting never
    # opens it and only copies it into SMS tasks for outreach.
    Column("phone", Text, nullable=True),
    Column("language", String(2), nullable=False),
    Column("name", String(128), nullable=True),
    Column("preferred_channel", String(8), nullable=False),
    Column("marketing_opt_out", Boolean, nullable=False),
    Column("profile_at", DateTime(timezone=True), nullable=False),
    comment="Latest subscriber profile, for routing tasks (newest occurred_at wins).",
)

subscriber_facts = Table(
    "subscriber_facts",
    metadata,
    Column("subscriber_id", String(64), primary_key=True),
    Column("churned_at", DateTime(timezone=True), nullable=True),
    Column("bill_mean", Numeric(14, 4), nullable=True),
    Column("bills_seen", Integer, nullable=False, server_default="0"),
    # occurred_at as ISO 8601, the amount as a decimal string.
    Column(
        "payments",
        JSONB,
        nullable=True,
        comment="[[occurred_at, amount], ...] of the latest payments, oldest first.",
    ),
    # services/alerting/activity.py: {kind: [item, ...]}, the newest 10 of each, oldest first.
    Column(
        "activity",
        JSONB,
        nullable=True,
        comment="Recent bills, payments, stop-notices and complaints, for the subscriber card.",
    ),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    comment="What the rules remember besides the profile: churned or not, the usual bill, "
    "the latest payments, recent activity.",
)

rule_state = Table(
    "rule_state",
    metadata,
    Column("subscriber_id", String(64), primary_key=True),
    Column("rule", String(64), primary_key=True),
    Column("armed", Boolean, nullable=False),
    Column("pending_since", DateTime(timezone=True), nullable=True),
    Column("pending_score", JSONB, nullable=True),
    Column("last_fired_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index(
        "ix_rule_state_pending",
        "pending_since",
        postgresql_where=text("pending_since IS NOT NULL"),
    ),
    comment="Per subscriber and rule: hysteresis (armed), dwell (pending) and last firing.",
)

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", Uuid, primary_key=True),
    Column("subscriber_id", String(64), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("severity", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("held_out", Boolean, nullable=False),
    Column("cause_id", Uuid, nullable=False),
    Column("fired_at", DateTime(timezone=True), nullable=False),
    Column("open_until", DateTime(timezone=True), nullable=False),
    Column("amount_due", Numeric(14, 4), nullable=True),
    Column("paid", Numeric(14, 4), nullable=False, server_default="0"),
    Column("end_reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_alerts_subscriber_status", "subscriber_id", "status"),
    comment="Every firing of a rule: open, cancelled, closed or superseded; held out or not.",
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Uuid, primary_key=True),
    Column("alert_id", Uuid, ForeignKey("alerting.alerts.alert_id"), nullable=True),
    Column("rule", String(64), nullable=True),
    Column("kind", String(32), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("subscriber_id", String(64), nullable=False, index=True),
    Column("queue", String(80), nullable=True),
    Column("priority", Float, nullable=False, server_default="0"),
    Column("manager_id", String(64), nullable=True),
    Column("capacity_day", Date, nullable=True),
    Column("status", String(16), nullable=False, server_default="published"),
    Column("cause_event_id", Uuid, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_tasks_manager_day", "manager_id", "capacity_day"),
    comment="Every task alerting made (published or held out), for capacity and audit.",
)

silences = Table(
    "silences",
    metadata,
    Column("silence_id", Uuid, primary_key=True),
    Column("rule", String(64), nullable=True),
    Column("tier", String(16), nullable=True),
    Column("subscriber_id", String(64), nullable=True),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=False),
    Column("comment", Text, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_silences_ends_at", "ends_at"),
    comment="Operator silences: alerts matching rule/tier/subscriber are not sent until ends_at.",
)
