"""scoring.features.blob: the feature state as compact bytes instead of JSONB

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 11:10:00.000000

Issue 20: a state as JSONB is about 1.6 KB (more once PostgreSQL's binary JSON
adds its offsets), as the compact encoding of services/scoring/codec.py about
700 bytes, and the service encodes it once a batch for both its cache and the
table. Rows written before keep their JSONB ``state`` until their subscriber's
next event rewrites them as ``blob`` (no long rewrite of a large table at
upgrade); ``state`` becomes nullable for that.

``fillfactor`` 80 leaves room on each page for an updated row to stay on its
page (a heap-only update, no new index entry for the primary key) when the
score, the only other indexed column, does not change.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "scoring"


def upgrade() -> None:
    op.add_column(
        "features",
        sa.Column(
            "blob",
            sa.LargeBinary(),
            nullable=True,
            comment="The state, compact (services/scoring/codec.py); NULL: still in `state`.",
        ),
        schema=SCHEMA,
    )
    op.alter_column("features", "state", nullable=True, schema=SCHEMA)
    op.execute(
        "COMMENT ON COLUMN scoring.features.state IS "
        "'The state as JSON, for rows not rewritten since version 0011 (else NULL: see blob).'"
    )
    op.execute("ALTER TABLE scoring.features SET (fillfactor = 80)")


def downgrade() -> None:
    # Bytes back to JSON, in Python (the codec), a thousand rows at a time.
    import orjson

    from services.scoring.codec import decode

    bind = op.get_bind()
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT subscriber_id, blob FROM scoring.features "
                "WHERE state IS NULL LIMIT 1000 FOR UPDATE"
            )
        ).all()
        if not rows:
            break
        bind.execute(
            sa.text(
                "UPDATE scoring.features SET state = CAST(:state AS jsonb), blob = NULL "
                "WHERE subscriber_id = :sid"
            ),
            [{"sid": sid, "state": orjson.dumps(decode(blob)).decode()} for sid, blob in rows],
        )
    op.execute("ALTER TABLE scoring.features RESET (fillfactor)")
    op.execute("COMMENT ON COLUMN scoring.features.state IS NULL")
    op.alter_column("features", "state", nullable=False, schema=SCHEMA)
    op.drop_column("features", "blob", schema=SCHEMA)
