"""Entries carry the subject they belong to: a subject's episodes, kept in the
workflow's scope, are visible to that subject alone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, not a batch copy: the copy would drop SQLite's full-text triggers.
    op.add_column("memory_entries", sa.Column("subject", sa.String(length=200), nullable=True))


def downgrade() -> None:
    op.execute("ALTER TABLE memory_entries DROP COLUMN subject")
