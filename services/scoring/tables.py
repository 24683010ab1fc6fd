"""Scoring's tables (PostgreSQL schema ``scoring``)."""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Double,
    Identity,
    Index,
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
    # For the retention purge; BRIN because processed_at follows insertion order.
    Index("ix_processed_events_processed_at", "processed_at", postgresql_using="brin"),
    comment="Event ids already applied: the idempotency key of the scoring consumer.",
)

features = Table(
    "features",
    metadata,
    Column("subscriber_id", String(64), primary_key=True),
    Column(
        "state",
        JSONB,
        nullable=True,
        comment=(
            "The state as JSON, for rows not rewritten since version 0011 (else NULL: see blob)."
        ),
    ),
    Column(
        "blob",
        LargeBinary,
        nullable=True,
        comment="The state, compact (services/scoring/codec.py); NULL: still in `state`.",
    ),
    Column("events_applied", BigInteger, nullable=False, server_default="0"),
    # The latest score (also inside `state`); a column to query by.
    Column("score", Double, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # What GET /v1/subscribers lists and filters on (services/scoring/listing.py),
    # copied from the state on every write so the listing never decodes a blob.
    Column("band", String(8), nullable=True, comment="The served score's band; NULL: unserved."),
    Column("tier", String(16), nullable=True, comment="The profile's tier; NULL: no profile."),
    Column("account_manager_id", String(64), nullable=True),
    Column(
        "changed_at",
        DateTime(timezone=True),
        nullable=True,
        comment="Database time of the last change of score, band, tier or manager.",
    ),
    Column(
        "changed_xid",
        BigInteger,
        nullable=True,
        comment="The transaction (xid8) of that change: a listing walk's snapshot test.",
    ),
    # The listing's order (score descending, subscriber id as the tie-break) and
    # its keyset; also what the score alone was indexed for before.
    Index("ix_features_score_subscriber", "score", "subscriber_id"),
    comment="Per-subscriber feature state, pending snapshot times and the latest score.",
    postgresql_with={"fillfactor": 80},
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("subscriber_id", String(64), primary_key=True),
    # Epoch seconds as a double: the exact key the engine keeps in the state.
    Column("taken_at", Double, primary_key=True),
    Column("features", JSONB, nullable=False),
    Column("predicted", Double, nullable=False),
    Column("prior", Double, nullable=False),
    Column("model", Double, nullable=True),
    # The blend before calibration at the snapshot: what the calibration learns to map.
    Column("raw", Double, nullable=True, comment="The blend before calibration."),
    Column("history_s", Double, nullable=True, comment="Seconds of history seen then."),
    comment="Feature snapshots waiting for their label (churn within the horizon or not).",
)

model_checkpoints = Table(
    "model_checkpoints",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("labels_seen", Integer, nullable=False),
    Column("positives_seen", Integer, nullable=False),
    Column("metrics", JSONB, nullable=False),
    Column("blob", LargeBinary, nullable=False),
    comment="Versioned model checkpoints; a (re)started replica resumes from the latest.",
)
