"""Schema migrations on SQLite and PostgreSQL: today's databases (made by
create_all before migrations existed, captured in tests/fixtures/schemas) upgrade
with their data, an empty database reaches the models' schema, and replicas
starting together migrate once."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from podium_shared import db
from podium_shared.migrations import (
    BASELINE,
    current_revision,
    head_revision,
    migrate,
    open_database,
)
from podium_shared.outbox import LEGACY_SOURCE, seen_before

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schemas"
SERVICES = ("router", "executor", "memory", "recovery")
# The module holding each service's metadata.
MODELS = {
    "router": "podium_router.state",
    "executor": "podium_executor.state",
    "memory": "podium_memory.state",
    "recovery": "podium_recovery.state",
}


def history(service: str) -> Path:
    path: Path = importlib.import_module(f"podium_{service}.migrations").HISTORY
    return path


def models(service: str) -> list[sa.MetaData]:
    """The shared tables and the service's, after importing every module of the service:
    a table declared anywhere in it (the executor's relay has one) must be migrated."""
    package = importlib.import_module(f"podium_{service}")
    for module in pkgutil.walk_packages(package.__path__, f"podium_{service}."):
        if ".migrations" not in module.name and not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    return [db.metadata, importlib.import_module(MODELS[service]).metadata]


def full_text(name: str) -> bool:
    """Full-text search objects are dialect DDL beside the models, not models."""
    return name.startswith("memory_entries_fts") or name in ("tsv", "ix_memory_entries_tsv")


def schema_drift(conn: sa.Connection, service: str) -> list[Any]:
    def include(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
        return not (name and full_text(name))

    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "include_object": include}
    )
    return list(compare_metadata(context, models(service)))


def load_todays_schema(engine: sa.Engine, service: str) -> None:
    """Build the database exactly as create_all did before migrations existed."""
    sql = (FIXTURES / f"{service}.{engine.dialect.name}.sql").read_text()
    body = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    with engine.begin() as conn:
        for statement in body.split(";\n\n"):
            if statement.strip():
                conn.exec_driver_sql(statement.strip().removesuffix(";"))


def _value(column: sa.Column[Any], n: int) -> Any:
    kind = column.type.python_type
    if kind is str:
        return f"v{n}"
    if kind is int:
        return n
    if kind is float:
        return float(n) + 0.5
    if kind is bytes:
        return f"b{n}".encode()
    if kind is datetime:
        return datetime(2026, 11, 30, 12, n, tzinfo=UTC)
    return {"n": n}  # JSON


def fill_every_table(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    """One row in every table (two in the inbox), as a running service would leave it."""
    reflected = sa.MetaData()
    reflected.reflect(engine)
    written: dict[str, list[dict[str, Any]]] = {}
    with engine.begin() as conn:
        for table in reflected.sorted_tables:
            if full_text(table.name):
                continue
            rows = []
            for n in (1, 2) if table.name == "inbox" else (1,):
                row = {
                    c.name: _value(c, n)
                    for c in table.columns
                    if c.computed is None
                    and not (c.primary_key and c.type.python_type is int and c.name == "id")
                }
                conn.execute(table.insert().values(row))
                rows.append(row)
            written[table.name] = rows
    return written


def read_back(engine: sa.Engine, table: str, columns: list[str]) -> list[dict[str, Any]]:
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*(t.c[c] for c in columns))).mappings().all()
    return [dict(r) for r in rows]


def _plain(value: Any) -> Any:
    # SQLite hands a zoned datetime back naive (in the zone it was given: UTC here).
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(({k: _plain(v) for k, v in r.items()} for r in rows), key=repr)

    return plain(a) == plain(b)


@pytest.mark.parametrize("service", SERVICES)
def test_todays_database_upgrades_with_its_data(database_url: str, service: str) -> None:
    engine = db.connect(database_url)
    try:
        load_todays_schema(engine, service)
        written = fill_every_table(engine)
        assert migrate(engine, history(service)) == head_revision(history(service))
        with engine.connect() as conn:
            assert schema_drift(conn, service) == []
        for table, rows in written.items():
            if table == "inbox":
                continue
            assert same(read_back(engine, table, list(rows[0])), rows), table
        inbox_rows = read_back(engine, "inbox", ["consumer", "message_id", "source", "topic"])
        assert sorted(r["message_id"] for r in inbox_rows) == ["v1", "v2"]
        assert {r["source"] for r in inbox_rows} == {LEGACY_SOURCE}
        with engine.connect() as conn:
            # What was handled before the upgrade stays handled, whatever its source.
            assert seen_before(conn, "v1", [("urn:any-system", "v1")]) == {("urn:any-system", "v1")}
        # Start-up runs it again on every start: nothing left to do.
        assert migrate(engine, history(service)) == head_revision(history(service))
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", SERVICES)
def test_an_empty_database_migrates_to_the_models_schema(database_url: str, service: str) -> None:
    engine = open_database(database_url, history(service))
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision(history(service))
            assert schema_drift(conn, service) == []
    finally:
        engine.dispose()


def test_the_baseline_is_todays_schema(tmp_path: Path) -> None:
    """Revision 0001 makes what create_all made: both databases upgrade alike."""
    for service in SERVICES:
        from_fixture = db.connect(f"sqlite:///{tmp_path / f'{service}-fixture.db'}")
        load_todays_schema(from_fixture, service)
        from_baseline = db.connect(f"sqlite:///{tmp_path / f'{service}-baseline.db'}")
        from alembic import command
        from alembic.config import Config

        with from_baseline.connect() as conn:
            config = Config()
            config.set_main_option("script_location", str(history(service)))
            config.attributes["connection"] = conn
            command.upgrade(config, BASELINE)
            conn.commit()

        def shape(engine: sa.Engine) -> dict[str, Any]:
            inspector = sa.inspect(engine)
            return {
                t: (
                    sorted(
                        (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(t)
                    ),
                    inspector.get_pk_constraint(t)["constrained_columns"],
                    sorted(i["name"] or "" for i in inspector.get_indexes(t)),
                )
                for t in inspector.get_table_names()
                if t != "alembic_version"
            }

        assert shape(from_baseline) == shape(from_fixture), service
        from_fixture.dispose()
        from_baseline.dispose()


def test_replicas_starting_together_migrate_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'executor.db'}"
    results: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            engine = open_database(url, history("executor"))
            with engine.connect() as conn:
                results.append(current_revision(conn) or "")
            engine.dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [head_revision(history("executor"))] * 4


def test_podium_migrate_upgrades_every_database_of_a_home(tmp_path: Path) -> None:
    for service, name in (
        ("router", "router.db"),
        ("executor", "executor-default.db"),
        ("memory", "memory.db"),
        ("recovery", "recovery.db"),
    ):
        engine = db.connect(f"sqlite:///{tmp_path / name}")
        load_todays_schema(engine, service)
        engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    env["PODIUM_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "podium", "migrate", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {s: head_revision(history(s)) for s in SERVICES}
    refused = subprocess.run(
        [sys.executable, "-m", "podium", "migrate", "--service", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0 and "unknown service nope" in refused.stderr
