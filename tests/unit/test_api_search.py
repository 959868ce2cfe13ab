"""``q``, the substring search in task ids, gives exactly the runs a plain LIKE gives,
page after page, whichever way a page finds them (the window of the next runs, the
index of trigrams, or a scan), on SQLite and PostgreSQL; on SQLite a rare ``q`` is
looked up in the index of trigrams, not scanned, and runs written before that index
existed are in it."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from podium_api.migrations import HISTORY
from podium_api.queries import SEARCH_WINDOW, RunFilter, list_runs, page_query
from podium_api.state import runs
from podium_api.tokens import Principal
from podium_shared import db
from podium_shared.migrations import open_database

pytestmark = pytest.mark.unit

EVERY = Principal("t", "viewer", ("*",))
ONE = Principal("t", "viewer", ("tenant-1",))
COUNT = SEARCH_WINDOW + 600


def task_ids(count: int) -> list[str]:
    rng = random.Random(5)
    ids = [f"{i:05d}-{rng.getrandbits(32):08x}" for i in range(count)]
    ids[3] = "00003-rare0ld1"  # the oldest runs: far below the first window
    ids[40] = "00040-rare0ld2"
    return ids


def row(i: int, task_id: str) -> dict[str, object]:
    return {
        "task_id": task_id,
        "tenant": f"tenant-{i % 3}",
        "status": "completed",
        "created_at": 1_000.0 + (i // 2),  # pairs share a time: the task id breaks the tie
        "updated_at": 1_000.0 + i,
        "seq": i + 1,
    }


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = open_database(database_url, HISTORY)
    with e.begin() as conn:
        conn.execute(runs.insert(), [row(i, t) for i, t in enumerate(task_ids(COUNT))])
    yield e
    e.dispose()


def every_page(engine: Engine, who: Principal, q: str, limit: int = 7) -> list[str]:
    found: list[str] = []
    cursor = None
    with engine.connect() as conn:
        while True:
            page, cursor = list_runs(conn, who, RunFilter(q=q), limit=limit, cursor=cursor)
            found += [r["task_id"] for r in page]
            if cursor is None:
                return found


def expected(who: Principal, q: str) -> list[str]:
    rows = [row(i, t) for i, t in enumerate(task_ids(COUNT))]
    kept = [r for r in rows if q in str(r["task_id"]) and who.sees(str(r["tenant"]))]
    kept.sort(key=lambda r: (r["created_at"], r["task_id"]), reverse=True)
    return [str(r["task_id"]) for r in kept]


@pytest.mark.parametrize(
    "q",
    [
        "-",  # every run: the window fills each page
        "rare0ld",  # two of the oldest runs: the index of trigrams
        "7a",  # shorter than a trigram: a scan
        "00",  # many, spread out
        "02599-",  # one, the newest
        "not-there",
    ],
)
@pytest.mark.parametrize("who", [EVERY, ONE], ids=["every tenant", "one tenant"])
def test_a_search_pages_through_exactly_what_like_finds(
    engine: Engine, who: Principal, q: str
) -> None:
    assert every_page(engine, who, q) == expected(who, q)


def test_a_rare_q_is_looked_up_in_the_trigrams_not_scanned(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'api.db'}", HISTORY)
    try:
        statement = page_query(EVERY, RunFilter(q="rare0ld"), limit=50, trigrams="sqlite")
        compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as conn:
            plan = " | ".join(
                str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")
            )
        assert "runs_task_ids VIRTUAL TABLE" in plan, plan
        assert "SEARCH runs USING INDEX sqlite_autoindex_runs_1 (task_id=?)" in plan, plan
        assert "SCAN runs USING" not in plan, plan
    finally:
        engine.dispose()


def test_runs_written_before_the_index_of_trigrams_are_in_it(tmp_path: Path) -> None:
    engine = db.connect(f"sqlite:///{tmp_path / 'api.db'}")
    try:
        with engine.begin() as conn:
            config = Config()
            config.set_main_option("script_location", str(HISTORY))
            config.attributes["connection"] = conn
            command.upgrade(config, "0002")
            conn.execute(runs.insert(), [row(i, t) for i, t in enumerate(task_ids(COUNT))])
        engine.dispose()
        engine = open_database(f"sqlite:///{tmp_path / 'api.db'}", HISTORY)
        with engine.connect() as conn:
            indexed = conn.execute(sa.text("SELECT count(*) FROM runs_task_ids")).scalar_one()
        assert indexed == COUNT
        assert every_page(engine, EVERY, "rare0ld") == ["00040-rare0ld2", "00003-rare0ld1"]
    finally:
        engine.dispose()


def test_a_rare_q_on_postgresql_takes_every_match_before_the_order(postgres_url: str) -> None:
    """Before the table's first ANALYZE (a projection just rebuilt, a bench just seeded)
    the plain query walked the list's index backwards, testing every run against the
    pattern (100 ms at 100,000 runs, where the index of trigrams takes 1 ms): the page
    of a rare ``q`` is sorted from its matches (a materialized CTE, which no ORDER BY
    ... LIMIT reaches), so no statistics can send the planner down the list."""
    engine = open_database(postgres_url, HISTORY)
    try:
        ids = task_ids(COUNT)
        with engine.begin() as conn:
            conn.execute(runs.insert(), [row(i, t) for i, t in enumerate(ids)])
        statement = page_query(EVERY, RunFilter(q="rare0ld"), limit=50, trigrams="postgresql")
        compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
        with engine.connect() as conn:
            plan = " | ".join(str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
            found = [r["task_id"] for r in conn.execute(statement).mappings()]
        assert "CTE Scan on matches" in plan, plan
        assert "Backward" not in plan, plan
        assert found == ["00040-rare0ld2", "00003-rare0ld1"]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
