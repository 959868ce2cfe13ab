"""Baseline: the api database (the shared inbox and outbox as the other services have
them at their revision 0004, the projection, tokens, submissions and actions).

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from podium_shared.migrations import (
    create_outbox_claims,
    create_outbox_parked,
    create_shared_tables,
    drop_outbox_claims,
    drop_outbox_parked,
    drop_shared_tables,
    key_inbox_by_source,
    unkey_inbox_by_source,
)

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_PAGE = ("created_at", "task_id")


def upgrade() -> None:
    # The shared tables the way every history reaches them, so they stay identical.
    create_shared_tables()
    key_inbox_by_source()
    create_outbox_parked()
    create_outbox_claims()
    op.create_table(
        "runs",
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=True),
        sa.Column("workflow", sa.String(length=200), nullable=True),
        sa.Column("workflow_version", sa.Integer(), nullable=True),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("accepted_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("input", sa.JSON(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=True),
        sa.Column("dlq", sa.JSON(), nullable=True),
        sa.Column("cancel_requested_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_index("ix_runs_created", "runs", list(_PAGE))
    op.create_index("ix_runs_tenant_created", "runs", ["tenant", *_PAGE])
    op.create_index("ix_runs_status_created", "runs", ["status", *_PAGE])
    op.create_index("ix_runs_workflow_created", "runs", ["workflow", *_PAGE])
    op.create_table(
        "steps",
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("step_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("capability", sa.String(length=200), nullable=True),
        sa.Column("pool", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("total_duration_ms", sa.Float(), nullable=False),
        sa.Column("first_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("usage", sa.JSON(), nullable=True),
        sa.Column("retry_due_at", sa.Float(), nullable=True),
        sa.Column("dlq", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("task_id", "step_id"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("tenants", sa.JSON(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    op.create_table(
        "submissions",
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_id", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_actions_task_id", "actions", ["task_id"])
    op.create_table(
        "meta",
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )


def downgrade() -> None:
    op.drop_table("meta")
    op.drop_index("ix_actions_task_id", table_name="actions")
    op.drop_table("actions")
    op.drop_table("submissions")
    op.drop_table("tokens")
    op.drop_table("steps")
    for name in (
        "ix_runs_workflow_created",
        "ix_runs_status_created",
        "ix_runs_tenant_created",
        "ix_runs_created",
    ):
        op.drop_index(name, table_name="runs")
    op.drop_table("runs")
    drop_outbox_claims()
    drop_outbox_parked()
    unkey_inbox_by_source()
    drop_shared_tables()
