"""The memory service's own tables (SQLAlchemy Core).

Full-text indexes are dialect DDL attached to ``memory_entries``: an external
content FTS5 table kept in step by triggers on SQLite, a generated ``tsvector``
column with a GIN index on PostgreSQL. Entries are immutable, so insert and
delete triggers are all the FTS5 table needs.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# BIGINT on PostgreSQL; on SQLite the key must be INTEGER to be the rowid FTS5 points at.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

entries = sa.Table(
    "memory_entries",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("scope_kind", sa.String(20), nullable=False),
    sa.Column("scope_id", sa.String(450), nullable=False),
    sa.Column("type", sa.String(20), nullable=False),  # fact | turn | episode
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("tokens", sa.Integer, nullable=False),
    sa.Column("idempotency_key", sa.String(450), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
    # Whose entry this is inside a shared scope: a subject's task's episode lives in its
    # workflow's scope but only that subject sees it. NULL: everyone the scope admits.
    sa.Column("subject", sa.String(200), nullable=True),
    sa.Index("ix_memory_entries_scope", "tenant", "scope_kind", "scope_id", "created_at"),
    sa.Index("ix_memory_entries_expires", "expires_at"),
)

# How many entries each scope holds, kept in the same transaction as every
# insert and delete so the size cap costs O(1) per remember.
scope_sizes = sa.Table(
    "memory_scope_sizes",
    metadata,
    sa.Column("tenant", sa.String(200), primary_key=True),
    sa.Column("scope_kind", sa.String(20), primary_key=True),
    sa.Column("scope_id", sa.String(450), primary_key=True),
    sa.Column("entries", sa.Integer, nullable=False),
)

# A conversation's running summary and the last turn folded into it.
sessions = sa.Table(
    "memory_sessions",
    metadata,
    sa.Column("tenant", sa.String(200), primary_key=True),
    sa.Column("scope_id", sa.String(450), primary_key=True),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("folded_through", sa.BigInteger, nullable=False),
    sa.Column("folded_turns", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),
)

# Who a task belongs to, learnt from its memory steps: task events carry no tenant.
task_owners = sa.Table(
    "memory_task_owners",
    metadata,
    sa.Column("task_id", sa.String(200), primary_key=True),
    sa.Column("tenant", sa.String(200), nullable=False),
    sa.Column("subject", sa.String(200), nullable=True),
    sa.Column("seen_at", sa.Float, nullable=False),
)

FTS_TABLE = "memory_entries_fts"

_SQLITE_DDL = [
    f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
    "text, content='memory_entries', content_rowid='id', tokenize='porter unicode61')",
    "CREATE TRIGGER IF NOT EXISTS memory_entries_fts_ai AFTER INSERT ON memory_entries BEGIN "
    f"INSERT INTO {FTS_TABLE}(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER IF NOT EXISTS memory_entries_fts_ad AFTER DELETE ON memory_entries BEGIN "
    f"INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, text) VALUES ('delete', old.id, old.text); END",
]

_POSTGRES_DDL = [
    "ALTER TABLE memory_entries ADD COLUMN IF NOT EXISTS tsv tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
    "CREATE INDEX IF NOT EXISTS ix_memory_entries_tsv ON memory_entries USING gin (tsv)",
]

for _dialect, _statements in (("sqlite", _SQLITE_DDL), ("postgresql", _POSTGRES_DDL)):
    for _statement in _statements:
        _ddl = sa.DDL(_statement)  # type: ignore[no-untyped-call]
        sa.event.listen(entries, "after_create", _ddl.execute_if(dialect=_dialect))
