"""The whole stack on PostgreSQL in `podium bench` (issue 18): which server processes
count under which service, one database per service, the same throughput driver with
the server's processes beside the services', the target and the report's line."""

from __future__ import annotations

from typing import Any

import psutil
import pytest
import sqlalchemy as sa

from podium_bench.drivers import measure_throughput
from podium_bench.options import PeerOptions
from podium_bench.report import postgres_line
from podium_bench.stack_postgres import (
    ROLES,
    SERVER,
    label,
    postgres_processes,
    service_databases,
)
from podium_bench.targets import postgres_target

pytestmark = pytest.mark.unit

OURS = {"router": "pb_1a2b_router", "executor": "pb_1a2b_executor"}


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("postgres: postgres pb_1a2b_router 127.0.0.1(50312) idle", "postgresql (router)"),
        ("postgres: postgres pb_1a2b_executor 127.0.0.1(50400) UPDATE", "postgresql (executor)"),
        ("postgres: autovacuum worker pb_1a2b_router", "postgresql (router)"),
        ("postgres: postgres podium_test_77 127.0.0.1(50999) idle", None),
        ("postgres: postgres other [local] idle", None),
        ("postgres: postgres other ::1(41000) idle in transaction", None),
        ("postgres: autovacuum worker podium_test_77", None),
        ("postgres: checkpointer ", SERVER),
        ("postgres: walwriter", SERVER),
        ("postgres: autovacuum launcher", SERVER),
        ("/usr/lib/postgresql/16/bin/postgres -D /tmp/pg/data -c port=5999", SERVER),
    ],
)
def test_a_server_process_counts_under_the_service_whose_database_it_serves(
    title: str, expected: str | None
) -> None:
    assert label(title, OURS) == expected


def test_the_target_is_half_the_sqlite_throughput() -> None:
    def pg(tput: float) -> dict[str, Any]:
        return {"throughput": {"median": {"tasks_per_s": tput}}}

    met = postgres_target(300.0, pg(150.0))
    assert (met.met, met.measured) == (True, "0.50 (150 vs 300 tasks/s)")
    assert postgres_target(300.0, pg(149.0)).met is False
    skipped = postgres_target(300.0, {"skipped": "no PostgreSQL server: none here"})
    assert skipped.met is None
    assert skipped.measured == "not measured: no PostgreSQL server: none here"
    assert postgres_target(300.0, None).met is None


def test_the_report_puts_postgresql_beside_sqlite_or_says_why_not() -> None:
    def side(tput: float, p50: float) -> dict[str, Any]:
        return {
            "throughput": {"median": {"tasks_per_s": tput}},
            "latency": {"hello": {"median": {"p50": p50, "p99": p50 * 3}}},
        }

    p = {
        **side(300.0, 20.0),
        "postgres": {**side(240.0, 25.0), "server": "PostgreSQL 16.4", "databases": "four"},
    }
    line = postgres_line(p)
    assert "Throughput 240 against 300 tasks/s on SQLite, 0.80\u00d7" in line
    assert "p50 25.0 ms (SQLite 20.0 ms), p99 75.0 ms (SQLite 60.0 ms)" in line
    assert "PostgreSQL 16.4" in line
    skipped = postgres_line({"postgres": {"skipped": "not chosen (`--no-postgres`)"}})
    assert skipped == "podium on PostgreSQL: not chosen (`--no-postgres`).\n"


async def test_throughput_counts_the_processes_it_is_given_listed_after_full_load() -> None:
    calls: list[int] = []
    listed_after: list[int] = []

    async def call(i: int) -> None:
        calls.append(i)
        sum(range(2000))  # some CPU in this process, the one being counted

    def processes() -> dict[str, Any]:
        listed_after.append(len(calls))
        me = psutil.Process()
        return {"bench": me, "bench 2": me}  # numbered: counted as one

    opts = PeerOptions.quick()
    opts.repeat, opts.throughput_s, opts.warmup = 2, 0.2, 3
    figure = await measure_throughput(call, "x", opts, lambda _: None, processes=processes)
    assert len(listed_after) == opts.repeat
    # Listed only after the warm-up and a round at full concurrency.
    assert listed_after[0] > opts.warmup + opts.in_flight
    assert set(figure["cpu_by_process"]) == {"bench"}
    assert figure["median"]["tasks_per_s"] > 0


def _databases(admin_url: str) -> set[str]:
    engine = sa.create_engine(admin_url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()


def test_each_service_gets_a_database_of_its_own_dropped_afterwards(
    postgres_admin_url: str,
) -> None:
    with service_databases(postgres_admin_url) as urls:
        names = {role: url.rsplit("/", 1)[1] for role, url in urls.items()}
        assert set(urls) == set(ROLES)
        assert len(set(names.values())) == len(ROLES)
        assert set(names.values()) <= _databases(postgres_admin_url)
        engine = sa.create_engine(urls["router"])
        try:
            with engine.connect() as conn:
                backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
                procs = postgres_processes(names)
                assert procs["postgresql (router)"].pid == backend
                assert procs[SERVER].pid == psutil.Process(backend).ppid()
                assert not any("executor" in name for name in procs)  # no connection there
        finally:
            engine.dispose()
    assert not set(names.values()) & _databases(postgres_admin_url)
