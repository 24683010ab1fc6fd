"""Scoring's tables (PostgreSQL schema ``scoring``)."""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
    Table,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB

from shared.db import make_metadata

metadata = make_metadata("scoring")

processed_events = Table(
    "processed_events",
    metadata,
    Column("event_id", Uuid, primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False),
    comment="Event ids already applied: the idempotency key of the scoring consumer.",
)

features = Table(
    "features",
    metadata,
    Column("subscriber_id", String(64), primary_key=True),
    Column("state", JSONB, nullable=False),
    Column("snapshot", JSONB, nullable=True),
    Column("snapshot_at", DateTime(timezone=True), nullable=True),
    Column("events_applied", BigInteger, nullable=False, server_default="0"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    comment="Incremental per-subscriber feature state and its pending label snapshot.",
)

risk_scores = Table(
    "risk_scores",
    metadata,
    Column("subscriber_id", String(64), primary_key=True),
    Column("score", Float, nullable=False),
    Column("previous_score", Float, nullable=True),
    Column("model_version", String(64), nullable=False),
    Column("reasons", JSONB, nullable=False),
    Column("cause_event_id", Uuid, nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("scored_at", DateTime(timezone=True), nullable=False),
    comment="The latest churn risk per subscriber.",
)

model_state = Table(
    "model_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("blob", LargeBinary, nullable=False),
    Column("labels_seen", Integer, nullable=False),
    Column("positives_seen", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    comment="The pickled River model, saved in the batch transaction that taught it.",
)
