"""The api database's history, on SQLite and PostgreSQL: an empty database migrates to
exactly the models' schema (its tables and the shared inbox and outbox), and back."""

from __future__ import annotations

from typing import Any

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


def not_search_ddl(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
    """The index of task ids' trigrams is dialect DDL beside the models (0005)."""
    return not (name and (name.startswith("runs_task_ids") or name == "ix_runs_task_id_trgm"))


def test_an_empty_database_migrates_to_the_models_schema_and_back(database_url: str) -> None:
    engine = open_database(database_url, HISTORY)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision(HISTORY)
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": not_search_ddl}
            )
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
