"""Test tiers: unit (no network), integration (real broker + real service
processes), e2e (the CLI against the whole stack).

The broker is chosen by ``--broker`` (or ``PODIUM_TEST_BROKER``): ``tansu``, the
embedded binary (the default), or ``kafka``, Apache Kafka 4.4 fetched by Maven and
started as a local KRaft node for the session. PODIUM_KAFKA_BOOTSTRAP, when set,
names a running cluster instead; with ``--broker kafka`` on a machine without Java but
with a Docker engine that answers, Kafka 4.4 runs in a container (testcontainers)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from podium.stack import Stack
from podium_shared import EmbeddedBroker, Settings
from podium_shared.kafka_broker import KafkaBroker, KafkaUnavailable
from podium_shared.logs import configure

REPO = Path(__file__).resolve().parent.parent
# The drill capabilities (flaky, fail, effect.record) exist only where PODIUM_DRILLS
# is set; the services the tests start inherit this environment (Stack passes
# os.environ on). Their files are confined to PODIUM_DRILLS_ROOT: see drills_root.
os.environ.setdefault("PODIUM_DRILLS", "1")
configure("tests", "WARNING")


def _docker_answers() -> bool:
    """Whether a Docker engine answers /_ping (asked with a plain socket: the
    docker SDK leaks its socket when no engine is there)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: object = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            h, _, p = host.removeprefix("tcp://").partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (h, int(p or 2375))
        else:
            return False
        with sock:
            sock.settimeout(2)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except OSError:
        return False


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--broker",
        choices=("tansu", "kafka"),
        default=os.environ.get("PODIUM_TEST_BROKER", "tansu"),
        help="the broker integration and e2e tests run on (default: PODIUM_TEST_BROKER, "
        "else tansu)",
    )


def pytest_configure(config: pytest.Config) -> None:
    global TEST_BROKER
    TEST_BROKER = config.getoption("--broker")


def pytest_report_header(config: pytest.Config) -> str:
    return f"broker: {TEST_BROKER}" + (
        f" at {os.environ['PODIUM_KAFKA_BOOTSTRAP']}"
        if os.environ.get("PODIUM_KAFKA_BOOTSTRAP")
        else ""
    )


TEST_BROKER = "tansu"


@pytest.fixture(scope="session", autouse=True)
def drills_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tests' drill files (effects.jsonl, fix files) live under tmp_path, beside
    the stacks' homes rather than in them (one file shared by replicas with separate
    homes): the session's base temporary directory is the drills' root."""
    root = Path(os.environ.setdefault("PODIUM_DRILLS_ROOT", str(tmp_path_factory.getbasetemp())))
    return root


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Kafka-only drills are deselected (not skipped) on Tansu: they are not tests of
    Tansu that fail, they are tests that do not apply to it. On Kafka, the tests that
    start a broker of their own (``own_broker``) are deselected: the Tansu tier runs them
    already, and the same run again would only lengthen CI."""
    unwanted = "own_broker" if config.getoption("--broker") == "kafka" else "kafka_only"
    kept = [i for i in items if i.get_closest_marker(unwanted) is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("PODIUM_KAFKA_BOOTSTRAP"):
        yield os.environ["PODIUM_KAFKA_BOOTSTRAP"]
        return
    if TEST_BROKER == "kafka":
        try:
            kafka = KafkaBroker(tmp_path_factory.mktemp("kafka")).start()
        except KafkaUnavailable:
            if not _docker_answers():
                raise
            # No Java here, but Docker: the same Kafka 4.4 in a container.
            from tests.support.containers import ApacheKafkaContainer

            with ApacheKafkaContainer() as container:
                yield container.get_bootstrap_server()
            return
        try:
            yield kafka.bootstrap
        finally:
            kafka.stop()
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def stack_settings(bootstrap: str, home: Path, **overrides: object) -> Settings:
    return Settings(
        kafka_bootstrap=bootstrap,
        broker=TEST_BROKER,
        home=home,
        topic_prefix=unique_prefix(),
        workflows=str(REPO / "workflows") + ":" + str(REPO / "tests" / "workflows"),
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The four services as real processes, on their own topic prefix."""
    home = tmp_path_factory.mktemp("podium-home")
    with Stack(stack_settings(kafka_bootstrap, home)) as s:
        yield s


# Set by `make test` from infra/postgres/ensure.sh, which provisions a server (or by hand,
# to use one of yours). Unset means no server could be had on this machine.
POSTGRES_ADMIN_URL = os.environ.get("PODIUM_TEST_POSTGRES_URL", "")
_NO_POSTGRES = (
    "PostgreSQL tests did not run: PODIUM_TEST_POSTGRES_URL is unset and "
    "infra/postgres/ensure.sh found no server (needs Debian's postgresql package or root "
    "to install it); run them with `make test` or set PODIUM_TEST_POSTGRES_URL"
)
_postgres_skipped: list[str] = []


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The PostgreSQL server's admin URL, for a test that makes databases of its own.

    Without a server the test is skipped and the run's last lines say so; under CI a
    missing server is a broken setup, and the test fails."""
    if not POSTGRES_ADMIN_URL:
        if os.environ.get("CI"):
            pytest.fail(_NO_POSTGRES)
        _postgres_skipped.append(_NO_POSTGRES)
        pytest.skip(_NO_POSTGRES)
    return POSTGRES_ADMIN_URL


@pytest.fixture(scope="session")
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A scratch PostgreSQL database for this test session, dropped afterwards (skipped,
    or failed under CI, without a server: ``postgres_admin_url``)."""
    import sqlalchemy as sa

    name = f"podium_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say in the last lines which tiers did not run on this machine, and why."""
    if _postgres_skipped:
        terminalreporter.write_line(_postgres_skipped[0], yellow=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same tests against SQLite and PostgreSQL (each test gets empty tables)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    import sqlalchemy as sa

    url: str = request.getfixturevalue("postgres_url")

    def empty() -> None:
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()

    # Before too: a test that used the session's database directly may have left
    # another service's tables and migration revision behind.
    empty()
    yield url
    empty()
