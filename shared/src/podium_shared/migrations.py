"""Schema migrations: one Alembic history per service, run at start-up and by
``podium migrate``.

Each service package holds its history in ``<package>/migrations`` (``env.py``
calls :func:`run_env`; ``versions/`` holds the revisions). The first revision,
``0001``, is the schema ``create_all`` made before migrations existed: the
inbox and outbox every service shares, plus the service's own tables. So:

    empty database           → upgrade 0001 … head
    database from create_all → stamp 0001 (it *is* 0001), then upgrade to head
    versioned database       → upgrade from its revision to head (often nothing)

Every run happens in one transaction that first takes a lock (an advisory lock
on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so replicas starting together
migrate once: the others wait, then find the database at head.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import command, context, op
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

from podium_shared.db import connect

BASELINE = "0001"
VERSION_TABLE = "alembic_version"

Legacy = Callable[[Connection], None]


def _config(history: Path, conn: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(history))
    config.attributes["connection"] = conn
    return config


def _lock(conn: Connection, history: Path) -> None:
    """Serialise migrations of one database (replicas start together)."""
    if conn.dialect.name == "postgresql":
        key = zlib.crc32(f"podium-migrate:{history.parent.name}".encode())
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})
    elif conn.dialect.name == "sqlite":
        # pysqlite opens a transaction only before DML, so DDL would run (and half
        # fail) outside one; an explicit IMMEDIATE transaction holds the write lock
        # from the first statement and makes the whole upgrade one atomic change.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def needs_stamp(conn: Connection) -> bool:
    """A database ``create_all`` made before migrations existed: tables, no version."""
    tables = set(sa.inspect(conn).get_table_names())
    return VERSION_TABLE not in tables and "inbox" in tables


def migrate(engine: Engine, history: Path, *, legacy: Legacy | None = None) -> str:
    """Bring the database to the newest revision of ``history``; return that revision.

    ``legacy`` brings an unversioned database up to the baseline first (recovery's
    columns added before migrations existed)."""
    with engine.connect() as conn:
        _lock(conn, history)
        config = _config(history, conn)
        if needs_stamp(conn):
            if legacy is not None:
                legacy(conn)
            command.stamp(config, BASELINE)
        command.upgrade(config, "head")
        conn.commit()
        return current_revision(conn) or ""


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at (None before any migration)."""
    return MigrationContext.configure(conn).get_current_revision()


def head_revision(history: Path) -> str:
    """The newest revision of a history."""
    config = Config()
    config.set_main_option("script_location", str(history))
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {history}")
    return head


def open_database(url: str, history: Path, *, legacy: Legacy | None = None) -> Engine:
    """A service's engine, its schema migrated to the newest revision."""
    engine = connect(url)
    migrate(engine, history, legacy=legacy)
    return engine


def run_env(target_metadata: Sequence[sa.MetaData]) -> None:
    """The body of every service's ``env.py``: migrate on the connection handed in.

    SQLite cannot alter a primary key or drop a column in place, so revisions run
    in batch mode there (copy, swap, drop), which is a no-op wrapper elsewhere."""
    conn = context.config.attributes.get("connection")
    if conn is None:
        raise RuntimeError("podium migrations run through podium_shared.migrations.migrate")
    context.configure(
        connection=conn,
        target_metadata=list(target_metadata),
        render_as_batch=conn.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


# The revisions every service's history shares: the inbox and outbox live in each
# service's database. Written out here, not derived from ``db.metadata``, because a
# revision must keep meaning what it meant when it was written.


def create_shared_tables() -> None:
    """Revision 0001, shared part: the inbox (keyed by ce_id alone, as it then was)
    and the outbox."""
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def drop_shared_tables() -> None:
    op.drop_table("outbox")
    op.drop_table("inbox")


_INBOX_PK = "inbox_pkey"  # PostgreSQL's name for the key create_all made


def key_inbox_by_source() -> None:
    """Revision 0002, shared: the inbox keyed by (consumer, ce_id, ce_source). Rows
    from before keep an empty source, which the lookup reads as "any source"
    (``outbox.LEGACY_SOURCE``), so nothing handled before the upgrade runs again."""
    if op.get_bind().dialect.name == "postgresql":
        op.add_column(
            "inbox",
            sa.Column("source", sa.String(length=300), nullable=False, server_default=""),
        )
        op.drop_constraint(_INBOX_PK, "inbox", type_="primary")
        op.create_primary_key(_INBOX_PK, "inbox", ["consumer", "message_id", "source"])
        op.alter_column("inbox", "source", server_default=None)
        return
    # SQLite cannot change a primary key in place: copy into a new table and swap.
    op.create_table(
        "inbox_keyed",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id", "source"),
    )
    op.execute(
        "INSERT INTO inbox_keyed (consumer, message_id, source, topic, received_at) "
        "SELECT consumer, message_id, '', topic, received_at FROM inbox"
    )
    op.drop_table("inbox")
    op.rename_table("inbox_keyed", "inbox")


def unkey_inbox_by_source() -> None:
    """Undo 0002: back to one row per (consumer, ce_id), the first source kept."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DELETE FROM inbox a USING inbox b WHERE a.consumer = b.consumer "
            "AND a.message_id = b.message_id AND a.source > b.source"
        )
        op.drop_constraint(_INBOX_PK, "inbox", type_="primary")
        op.create_primary_key(_INBOX_PK, "inbox", ["consumer", "message_id"])
        op.drop_column("inbox", "source")
        return
    op.create_table(
        "inbox_unkeyed",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("message_id", sa.String(length=200), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("received_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id"),
    )
    op.execute(
        "INSERT OR IGNORE INTO inbox_unkeyed (consumer, message_id, topic, received_at) "
        "SELECT consumer, message_id, topic, received_at FROM inbox ORDER BY source"
    )
    op.drop_table("inbox")
    op.rename_table("inbox_unkeyed", "inbox")


def create_outbox_parked() -> None:
    """Revision 0003, shared: ``outbox_parked``, where the relay moves a row the
    broker can never accept (too large, no key and no value), with its error."""
    op.create_table(
        "outbox_parked",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=True),
        sa.Column("value", sa.LargeBinary(), nullable=True),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("parked_at", sa.Float(), nullable=False),
        sa.Column("error_type", sa.String(length=200), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def drop_outbox_parked() -> None:
    op.drop_table("outbox_parked")


def create_outbox_claims() -> None:
    """Revision 0004 of router, memory and recovery: ``outbox_claims``, where each
    relay of replicas sharing a PostgreSQL database claims the rows it sends. The
    executor's baseline has had it from the start."""
    op.create_table(
        "outbox_claims",
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=200), nullable=False),
        sa.Column("claimed_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("outbox_id"),
    )


def drop_outbox_claims() -> None:
    op.drop_table("outbox_claims")
