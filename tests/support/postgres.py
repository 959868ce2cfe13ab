"""Scratch PostgreSQL databases for tests that need more than the session's one:
one per role, as a deployment gives each role its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


@contextmanager
def scratch_databases(admin_url: str, names: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Create one empty database per name on the server of ``admin_url``; yield
    name -> URL, and drop them all afterwards (connections still open are ended)."""
    run = uuid.uuid4().hex[:8]
    created = {name: f"podium_test_{run}_{name}" for name in names}
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    base = admin_url.rsplit("/", 1)[0]
    try:
        with admin.connect() as conn:
            for database in created.values():
                conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
        yield {name: f"{base}/{database}" for name, database in created.items()}
    finally:
        with admin.connect() as conn:
            for database in created.values():
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
