"""Alerting's tables (PostgreSQL schema ``alerting``)."""

from sqlalchemy import Boolean, Column, DateTime, Numeric, String, Table, Uuid

from shared.db import make_metadata

metadata = make_metadata("alerting")

processed_messages = Table(
    "processed_messages",
    metadata,
    Column("message_id", Uuid, primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    comment="event_id / score_id already handled: the alerting consumer's idempotency key.",
)

subscribers = Table(
    "subscribers",
    metadata,
    Column("subscriber_id", String(64), primary_key=True),
    Column("tier", String(16), nullable=False),
    Column("monthly_value", Numeric(14, 4), nullable=False),
    Column("account_manager_id", String(64), nullable=True),
    Column("phone", String(16), nullable=True),
    Column("language", String(2), nullable=False),
    Column("name", String(128), nullable=True),
    Column("preferred_channel", String(8), nullable=False),
    Column("marketing_opt_out", Boolean, nullable=False),
    Column("profile_at", DateTime(timezone=True), nullable=False),
    comment="Latest subscriber profile, for routing tasks (newest occurred_at wins).",
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Uuid, primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("subscriber_id", String(64), nullable=False, index=True),
    Column("cause_event_id", Uuid, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    comment="Every task alerting has published (dedup and, later, cancellation).",
)
