"""Run changes: ``runs.seq`` (the change sequence a live stream resumes from) and the
``counters`` table that numbers them.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("seq", sa.BigInteger(), nullable=False, server_default="0"))
    op.create_index("ix_runs_seq", "runs", ["seq"])
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(counters, [{"name": "runs", "value": 0}])


def downgrade() -> None:
    op.drop_table("counters")
    op.drop_index("ix_runs_seq", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("seq")
