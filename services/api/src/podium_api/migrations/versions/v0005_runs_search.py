"""Searching runs at 100,000 of them (issue 17's speed): an index for the ``subject``
filter, and an index of the task ids' trigrams for ``q``, the substring search
(``podium_api.queries``): an FTS5 ``trigram`` table on SQLite, kept by a trigger;
``pg_trgm``'s GIN index on PostgreSQL, where the extension can be had (without it
``q`` scans, as before).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Runs are never deleted (a rebuilt projection is a new database), so only inserts
# are mirrored; task ids never change.
SQLITE_UP = (
    "CREATE VIRTUAL TABLE runs_task_ids USING fts5(task_id, tokenize = 'trigram')",
    "INSERT INTO runs_task_ids (task_id) SELECT task_id FROM runs",
    "CREATE TRIGGER runs_task_ids_insert AFTER INSERT ON runs BEGIN "
    "INSERT INTO runs_task_ids (task_id) VALUES (new.task_id); END",
)
SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS runs_task_ids_insert",
    "DROP TABLE IF EXISTS runs_task_ids",
)


def upgrade() -> None:
    op.create_index("ix_runs_subject_created", "runs", ["subject", "created_at", "task_id"])
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in SQLITE_UP:
            op.execute(statement)
    elif bind.dialect.name == "postgresql":
        # A trusted extension (PostgreSQL 13+): the database's owner may create it. A
        # role that may not, or a server without contrib, leaves ``q`` to scan.
        try:
            with bind.begin_nested():
                bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
        except sa.exc.DBAPIError:
            return
        op.execute("CREATE INDEX ix_runs_task_id_trgm ON runs USING gin (task_id gin_trgm_ops)")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in SQLITE_DOWN:
            op.execute(statement)
    elif bind.dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_runs_task_id_trgm")
    op.drop_index("ix_runs_subject_created", table_name="runs")
