"""Baseline: the memory database as create_all made it before migrations existed.

Revision ID: 0001
Revises: (none)
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from podium_shared.migrations import create_shared_tables, drop_shared_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_FULLTEXT = {
    "sqlite": (
        "CREATE VIRTUAL TABLE IF NOT EXISTS memory_entries_fts USING fts5("
        "text, content='memory_entries', content_rowid='id', tokenize='porter unicode61')",
        "CREATE TRIGGER IF NOT EXISTS memory_entries_fts_ai AFTER INSERT ON memory_entries "
        "BEGIN INSERT INTO memory_entries_fts(rowid, text) VALUES (new.id, new.text); END",
        "CREATE TRIGGER IF NOT EXISTS memory_entries_fts_ad AFTER DELETE ON memory_entries "
        "BEGIN INSERT INTO memory_entries_fts(memory_entries_fts, rowid, text) "
        "VALUES ('delete', old.id, old.text); END",
    ),
    "postgresql": (
        "ALTER TABLE memory_entries ADD COLUMN IF NOT EXISTS tsv tsvector "
        "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
        "CREATE INDEX IF NOT EXISTS ix_memory_entries_tsv ON memory_entries USING gin (tsv)",
    ),
}


def upgrade() -> None:
    create_shared_tables()
    op.create_table(
        "memory_entries",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("scope_kind", sa.String(length=20), nullable=False),
        sa.Column("scope_id", sa.String(length=450), nullable=False),
        sa.Column("type", sa.String(length=20), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=450), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("memory_entries", schema=None) as batch_op:
        batch_op.create_index("ix_memory_entries_expires", ["expires_at"], unique=False)
        batch_op.create_index(
            "ix_memory_entries_scope",
            ["tenant", "scope_kind", "scope_id", "created_at"],
            unique=False,
        )

    # Full-text search, as state.py's DDL hooks made it on create_all (written out:
    # a revision keeps meaning what it meant).
    dialect = op.get_bind().dialect.name
    for statement in _FULLTEXT.get(dialect, ()):
        op.execute(statement)

    op.create_table(
        "memory_scope_sizes",
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("scope_kind", sa.String(length=20), nullable=False),
        sa.Column("scope_id", sa.String(length=450), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "scope_kind", "scope_id"),
    )
    op.create_table(
        "memory_sessions",
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("scope_id", sa.String(length=450), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("folded_through", sa.BigInteger(), nullable=False),
        sa.Column("folded_turns", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("tenant", "scope_id"),
    )
    op.create_table(
        "memory_task_owners",
        sa.Column("task_id", sa.String(length=200), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=True),
        sa.Column("seen_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("task_id"),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS memory_entries_fts")
    op.drop_table("memory_task_owners")
    op.drop_table("memory_sessions")
    op.drop_table("memory_scope_sizes")
    with op.batch_alter_table("memory_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_memory_entries_scope")
        batch_op.drop_index("ix_memory_entries_expires")

    op.drop_table("memory_entries")
    drop_shared_tables()
