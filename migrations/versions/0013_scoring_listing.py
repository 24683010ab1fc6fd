"""scoring.features: band, tier, manager and change columns for GET /v1/subscribers

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 17:20:00.000000

Issue 21: other systems list who is at risk (services/scoring/listing.py),
filtered by band, tier, account manager, score range and change time, ordered
by score. What they filter on lives inside each row's state (a blob), so it is
copied into columns on every write; the existing rows are filled here from
their states, a thousand at a time. The account manager is new in the state
(``latest["manager"]``): rows written before this version have none until
their subscriber's next profile event (docs/scoring.md, "Listing").

The score's one-column index becomes ``(score, subscriber_id)``: the listing's
order and keyset, and still what a query on the score alone uses; the table
keeps the same number of indexes, so a write costs what it did.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "scoring"


def upgrade() -> None:
    for column in (
        sa.Column(
            "band", sa.String(8), nullable=True, comment="The served score's band; NULL: unserved."
        ),
        sa.Column(
            "tier", sa.String(16), nullable=True, comment="The profile's tier; NULL: no profile."
        ),
        sa.Column("account_manager_id", sa.String(64), nullable=True),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Database time of the last change of score, band, tier or manager.",
        ),
        sa.Column(
            "changed_xid",
            sa.BigInteger(),
            nullable=True,
            comment="The transaction (xid8) of that change: a listing walk's snapshot test.",
        ),
    ):
        op.add_column("features", column, schema=SCHEMA)
    _backfill()
    op.create_index(
        "ix_features_score_subscriber", "features", ["score", "subscriber_id"], schema=SCHEMA
    )
    op.drop_index("ix_scoring_features_score", table_name="features", schema=SCHEMA)


def _backfill() -> None:
    """Band and tier of the rows already stored, from their states (in Python: the codec)."""
    from services.scoring.codec import decode
    from services.scoring.listing import listed_columns

    bind = op.get_bind()
    after = ""
    while True:
        rows = bind.execute(
            sa.text(
                "SELECT subscriber_id, blob, state FROM scoring.features "
                "WHERE subscriber_id > :after ORDER BY subscriber_id LIMIT 1000"
            ),
            {"after": after},
        ).all()
        if not rows:
            break
        after = rows[-1][0]
        values = []
        for sid, blob, state in rows:
            stored = decode(blob) if blob is not None else state
            values.append({"sid": sid, **listed_columns(stored)})
        bind.execute(
            sa.text(
                "UPDATE scoring.features SET band = :band, tier = :tier, "
                "account_manager_id = :account_manager_id, changed_at = now(), "
                "changed_xid = pg_current_xact_id()::text::bigint WHERE subscriber_id = :sid"
            ),
            values,
        )


def downgrade() -> None:
    op.create_index("ix_scoring_features_score", "features", ["score"], schema=SCHEMA)
    op.drop_index("ix_features_score_subscriber", table_name="features", schema=SCHEMA)
    for name in ("changed_xid", "changed_at", "account_manager_id", "tier", "band"):
        op.drop_column("features", name, schema=SCHEMA)
