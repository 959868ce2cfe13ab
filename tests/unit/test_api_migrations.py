"""The api database's history, on SQLite and PostgreSQL: an empty database migrates to
exactly the models' schema (its tables and the shared inbox and outbox), and back."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from podium_api.migrations import HISTORY
from podium_api.state import metadata
from podium_shared import db
from podium_shared.migrations import current_revision, head_revision, open_database

pytestmark = pytest.mark.unit


def test_an_empty_database_migrates_to_the_models_schema_and_back(database_url: str) -> None:
    engine = open_database(database_url, HISTORY)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision(HISTORY)
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, [db.metadata, metadata]) == []
            config = Config()
            config.set_main_option("script_location", str(HISTORY))
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
            conn.commit()
            left = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
            assert left == set()
    finally:
        engine.dispose()
