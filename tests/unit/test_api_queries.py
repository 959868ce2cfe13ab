"""The runs list stays an index range at any depth: SQLite's plan for each common
page walks an index in (created_at, task_id) order, with no sort of the whole
table (``USE TEMP B-TREE FOR ORDER BY``), whatever the cursor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from podium_api.migrations import HISTORY
from podium_api.queries import RunFilter, encode_cursor, page_query
from podium_api.tokens import Principal
from podium_shared.migrations import open_database

pytestmark = pytest.mark.unit

EVERY = Principal("t", "viewer", ("*",))
ONE = Principal("t", "viewer", ("acme",))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = open_database(f"sqlite:///{tmp_path / 'api.db'}", HISTORY)
    yield e
    e.dispose()


@pytest.mark.parametrize(
    ("who", "f", "index"),
    [
        (EVERY, RunFilter(), "ix_runs_created"),
        (ONE, RunFilter(), "ix_runs_tenant_created"),
        (EVERY, RunFilter(status="failed"), "ix_runs_status_created"),
        (EVERY, RunFilter(workflow="hello"), "ix_runs_workflow_created"),
        (EVERY, RunFilter(subject="alice"), "ix_runs_subject_created"),
        (EVERY, RunFilter(since=1.0, until=2.0), "ix_runs_created"),
    ],
)
@pytest.mark.parametrize("cursor", [None, encode_cursor(1e9, "task-1")])
def test_a_page_is_an_index_range(
    engine: Engine, who: Principal, f: RunFilter, index: str, cursor: str | None
) -> None:
    statement = page_query(who, f, limit=50, cursor=cursor)
    compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        plan = " | ".join(
            str(row[-1])
            for row in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {compiled}",
                tuple(compiled.params[k] for k in compiled.positiontup or ()),
            )
        )
    assert index in plan, plan
    assert "TEMP B-TREE" not in plan, plan
