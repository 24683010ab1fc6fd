"""outreach: the workbench's people, sessions and phone reveals; tasks.escalated_at

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 08:40:00.000000

Issue 19: account managers and team leads sign in to browser pages
(services/outreach/workbench). A VIP reminder not done in time is escalated.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "outreach"


def upgrade() -> None:
    op.add_column(
        "tasks", sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True), schema=SCHEMA
    )
    op.create_table(
        "people",
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("manager_id", sa.String(64), nullable=True),
        sa.Column("team_lead_id", sa.String(64), nullable=True),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("failed_sign_ins", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("person_id", name=op.f("pk_people")),
        sa.UniqueConstraint("manager_id", name=op.f("uq_people_manager_id")),
        sa.ForeignKeyConstraint(
            ["team_lead_id"],
            ["outreach.people.person_id"],
            name=op.f("fk_people_team_lead_id_people"),
        ),
        schema=SCHEMA,
        comment="People who sign in to the workbench (not API keys), with their role and team.",
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_web_sessions")),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["outreach.people.person_id"],
            name=op.f("fk_web_sessions_person_id_people"),
        ),
        schema=SCHEMA,
        comment="Signed-in browser sessions of the workbench.",
    )
    op.create_index(
        op.f("ix_outreach_web_sessions_expires_at"), "web_sessions", ["expires_at"], schema=SCHEMA
    )
    op.create_table(
        "phone_reveals",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("subscriber_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_phone_reveals")),
        schema=SCHEMA,
        comment="Audit: every time a person revealed a subscriber's phone number to call it.",
    )
    op.create_index(
        op.f("ix_outreach_phone_reveals_subscriber_id"),
        "phone_reveals",
        ["subscriber_id"],
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("phone_reveals", schema=SCHEMA)
    op.drop_table("web_sessions", schema=SCHEMA)
    op.drop_table("people", schema=SCHEMA)
    op.drop_column("tasks", "escalated_at", schema=SCHEMA)
