"""docker-compose.yml's PostgreSQL init script, run for real against the test server
(no Docker here: the script is run the way the postgres image runs it, with psql)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_ADMIN_URL

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "infra/postgres/initdb/podium-databases.sh"


def psql() -> str:
    found = shutil.which("psql") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"), reverse=True)), None
    )
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("psql not found (Debian's postgresql-client)")
        pytest.skip("psql not found: the init script cannot be run here")
    return found


def compose_databases() -> list[str]:
    """PODIUM_DATABASES of the postgres service, with ${PODIUM_POOL:-default} unset."""
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    names = str(doc["services"]["postgres"]["environment"]["PODIUM_DATABASES"])
    return names.replace("${PODIUM_POOL:-default}", "default").split()


@pytest.fixture
def names() -> Iterator[list[str]]:
    """compose's database names and a pool with a '-', under a prefix of this test's,
    so that they do not meet another test's databases on the shared server; dropped after."""
    if not POSTGRES_ADMIN_URL:
        # As every PostgreSQL test: skipped on a machine without a server, a failure under CI.
        if os.environ.get("CI"):
            pytest.fail("no PostgreSQL server (PODIUM_TEST_POSTGRES_URL)")
        pytest.skip("no PostgreSQL server (PODIUM_TEST_POSTGRES_URL)")
    tag = f"t{uuid.uuid4().hex[:8]}"
    out = [f"{tag}_{n}" for n in [*compose_databases(), "podium_executor_gpu-a"]]
    yield out
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in out:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def run_script(databases: list[str]) -> subprocess.CompletedProcess[str]:
    url = make_url(POSTGRES_ADMIN_URL or "postgresql://postgres@127.0.0.1/postgres")
    env = {
        "PATH": f"{Path(psql()).parent}:{os.environ['PATH']}",
        "PGHOST": url.host or "127.0.0.1",
        "PGPORT": str(url.port or 5432),
        "POSTGRES_USER": url.username or "postgres",
        "PODIUM_DATABASES": " ".join(databases),
    }
    if url.password:
        env["PGPASSWORD"] = url.password
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def existing(names: list[str]) -> set[str]:
    admin = sa.create_engine(POSTGRES_ADMIN_URL)
    with admin.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT datname FROM pg_database WHERE datname = ANY(:n)"), {"n": names}
        )
        found = {r[0] for r in rows}
    admin.dispose()
    return found


def test_the_init_script_creates_every_database_once(names: list[str]) -> None:
    assert len(compose_databases()) >= 4  # router, memory, recovery, a pool
    first = run_script(names)
    assert first.returncode == 0, first.stderr
    assert existing(names) == set(names)
    assert first.stdout.count("CREATE DATABASE") == len(names)
    # Again on the same server (a pool added later): nothing to create, no error.
    again = run_script(names)
    assert again.returncode == 0, again.stderr
    assert "CREATE DATABASE" not in again.stdout
    assert existing(names) == set(names)


def test_the_init_script_refuses_to_run_without_names() -> None:
    result = run_script([])
    assert result.returncode != 0
    assert "PODIUM_DATABASES" in result.stderr
