"""A run's history (the router's TaskHistoryRecorded) and its plan (``runs.plan``, from
TaskAccepted: each step and what it needs).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("plan", sa.JSON(), nullable=True))
    op.create_table(
        "history",
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("step_id", sa.String(length=200), nullable=True),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("next_action", sa.Text(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "seq"),
    )


def downgrade() -> None:
    op.drop_table("history")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("plan")
