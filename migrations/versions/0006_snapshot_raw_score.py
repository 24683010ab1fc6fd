"""scoring.snapshots raw and history_s: the blend before calibration and the history seen

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 21:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: snapshots taken before this version have none; the calibration skips them.
    op.add_column(
        "snapshots",
        sa.Column("raw", sa.Double(), nullable=True, comment="The blend before calibration."),
        schema="scoring",
    )
    op.add_column(
        "snapshots",
        sa.Column("history_s", sa.Double(), nullable=True, comment="Seconds of history seen then."),
        schema="scoring",
    )


def downgrade() -> None:
    op.drop_column("snapshots", "history_s", schema="scoring")
    op.drop_column("snapshots", "raw", schema="scoring")
