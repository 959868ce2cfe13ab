"""Databases from before retries (the skeleton) lack the timers table and six
columns of ``failures``; this brings such an unversioned database up to revision
0001, which is then stamped. Written out, not read from ``state``, because it
must keep meaning revision 0001 when the tables change."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from podium_recovery.migrations.versions.v0001_baseline import create_timers

_ADDED_WITH_RETRIES: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("pool", sa.String(length=200)),
    ("detail", sa.Text()),
    ("retry_pool", sa.String(length=200)),
    ("retry_model", sa.String(length=200)),
    ("delay_s", sa.Float()),
    ("due_at", sa.DateTime(timezone=True)),
)


def to_baseline(conn: Connection) -> None:
    """Add what revision 0001 has and a skeleton database lacks."""
    inspector = sa.inspect(conn)
    tables = set(inspector.get_table_names())
    with Operations.context(MigrationContext.configure(conn)):
        if "timers" not in tables:
            create_timers()
        if "failures" in tables:
            present = {c["name"] for c in inspector.get_columns("failures")}
            for name, kind in _ADDED_WITH_RETRIES:
                if name not in present:
                    op.add_column("failures", sa.Column(name, kind, nullable=True))
