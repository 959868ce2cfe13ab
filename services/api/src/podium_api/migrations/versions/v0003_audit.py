"""The audit trail (``audit``, one row per replay of dead letters or cancel) and the
new dead letters the live streams send (``dead_letter_events``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("token_name", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_at", "audit", ["at"])
    op.create_table(
        "dead_letter_events",
        sa.Column("record_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("step_id", sa.String(length=200), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("record_id"),
        sa.UniqueConstraint("seq"),
    )


def downgrade() -> None:
    op.drop_table("dead_letter_events")
    op.drop_index("ix_audit_at", table_name="audit")
    op.drop_table("audit")
