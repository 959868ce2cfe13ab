"""Database wiring: one engine per service, and the tables every service shares
(inbox, outbox, and the outbox's parked rows and claims). Each service owns its
database; nothing is shared between services (replicas of one role share theirs).
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from podium_shared.secrets import touch_private

metadata = sa.MetaData()

# A message is identified by its CloudEvents source and id together: two upstream
# systems may both number their events 1, 2, 3. Keyed (consumer, id, source) so the
# lookup by consumer and ids uses the key's prefix.
inbox = sa.Table(
    "inbox",
    metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("message_id", sa.String(200), primary_key=True),
    sa.Column("source", sa.String(300), primary_key=True),
    sa.Column("topic", sa.String(300), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("topic", sa.String(300), nullable=False),
    sa.Column("key", sa.LargeBinary, nullable=True),
    sa.Column("value", sa.LargeBinary, nullable=True),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Outbox rows the broker or the client refused for good (too large, malformed):
# moved here by the relay so they never block the rows behind them, kept whole
# with the reason until an operator looks (`podium outbox parked`).
outbox_parked = sa.Table(
    "outbox_parked",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # Not a key: SQLite may hand a deleted outbox id to a later row.
    sa.Column("outbox_id", sa.Integer, nullable=False),
    sa.Column("topic", sa.String(300), nullable=False),
    sa.Column("key", sa.LargeBinary, nullable=True),
    sa.Column("value", sa.LargeBinary, nullable=True),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("parked_at", sa.Float, nullable=False),
    sa.Column("error_type", sa.String(200), nullable=False),
    sa.Column("error", sa.Text, nullable=False),
)


# Which relay holds which outbox row, where replicas share a database and each
# relay claims the rows it sends (``claiming.py``).
outbox_claims = sa.Table(
    "outbox_claims",
    metadata,
    sa.Column("outbox_id", sa.Integer, primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("claimed_at", sa.Float, nullable=False),
)


# How long a new connection keeps trying to put the file in WAL mode while
# other replicas open the same file at the same moment.
_WAL_SWITCH_DEADLINE_S = 30.0


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=5000")
    # WAL + NORMAL: durable across process crashes (our failure model), ~40k commits/s.
    _switch_to_wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _switch_to_wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``, retried: while another connection creates or
    recovers the WAL index, SQLite answers "database is locked" at once, without
    calling the busy handler. Eight executor replicas starting together on one
    ledger hit this (CI, the executors' scaling bench)."""
    deadline = time.monotonic() + _WAL_SWITCH_DEADLINE_S
    delay = 0.01
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def connect(url: str) -> Engine:
    """The engine of one service's database, without touching its schema."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///").split("?", 1)[0]
        if path and path != ":memory:" and not path.startswith("file:"):
            # 0600 before SQLite opens it: its WAL and shared-memory files take its mode.
            touch_private(Path(path))
        engine = sa.create_engine(url, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def make_engine(url: str, table_metadata: sa.MetaData | None = None) -> Engine:
    """Create the engine and the schema (inbox, outbox and these tables) from the
    models, for tests and tools. Services migrate instead (``podium_shared.migrations``)."""
    engine = connect(url)
    for attempt in range(5):
        try:
            metadata.create_all(engine)
            if table_metadata is not None:
                table_metadata.create_all(engine)
            break
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError):
            # Replicas starting together race between "does it exist" and "create";
            # the loser sees "already exists" and finds the tables on the next look.
            if attempt == 4:
                raise
            time.sleep(0.1 * (attempt + 1))
    return engine


@functools.cache
def insert_ignore_statement(dialect: str, table: sa.Table) -> Any:
    """An insert into ``table`` that skips a row whose key exists (add ``.from_select``
    or execute it with values)."""
    # Built once per table and executed with its values as parameters: SQLAlchemy
    # then reuses the compiled form instead of re-keying a new statement per row.
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    # A plain insert would raise on a duplicate instead of ignoring it: refuse clearly.
    raise NotImplementedError(f"podium stores state in SQLite or PostgreSQL, not {dialect}")


@functools.cache
def insert_new_statement(dialect: str, table: sa.Table) -> Any:
    """An insert of many rows that skips those whose primary key exists and returns the
    keys of the rows it inserted (SQLite 3.35 and PostgreSQL both answer RETURNING
    on an insert that does nothing on conflict)."""
    return insert_ignore_statement(dialect, table).returning(*table.primary_key)


def insert_ignore(conn: Connection, table: sa.Table, values: Mapping[str, Any]) -> bool:
    """Insert one row unless its primary key exists; True when it was inserted."""
    statement = insert_ignore_statement(conn.dialect.name, table)
    return bool(conn.execute(statement, dict(values)).rowcount)
