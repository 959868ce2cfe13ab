"""Pools and workflows in the api, without a broker: which status reports are live,
lag per partition, breakers across replicas, the executor's report, the workflow
folders, and the two routes in-process (roles, 503 when the broker cannot be asked)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine

from podium_api import tokens
from podium_api.app import create_app
from podium_api.migrations import HISTORY
from podium_api.pools import (
    PoolsUnavailable,
    group_of,
    live_reports,
    partition_lag,
    pool_breakers,
    pool_view,
)
from podium_api.routes_pools import configure
from podium_api.service import Commands
from podium_api.workflows import list_workflows, read_version
from podium_contracts import BreakerStatus, PoolStatusReported, RateLimitStatus
from podium_executor.breaker import Breakers, State
from podium_executor.status import status_report
from podium_shared import Topics
from podium_shared.acls import Operation, Pattern, Resource, acls
from podium_shared.migrations import open_database
from tests.conftest import REPO

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def report(
    replica: str, at: datetime, *, pool: str = "default", interval_s: float = 10.0, **breakers: str
) -> PoolStatusReported:
    return PoolStatusReported(
        pool=pool,
        replica=replica,
        concurrency=4,
        breakers={p: BreakerStatus(state=s) for p, s in breakers.items()},  # type: ignore[arg-type]
        rate_limit=RateLimitStatus(per_s=5.0, burst=5),
        interval_s=interval_s,
        reported_at=at,
    )


def test_each_replica_counts_with_its_latest_report_while_it_reports() -> None:
    reports = [
        report("a", T0, openai="closed"),
        report("a", T0 + timedelta(seconds=10), openai="open"),
        report("b", T0 + timedelta(seconds=5), pool="gpu"),
        report("gone", T0 - timedelta(seconds=60)),
    ]
    live = live_reports(reports, now=T0 + timedelta(seconds=20))
    assert sorted(live) == ["default", "gpu"]
    assert [r.replica for r in live["default"]] == ["a"]
    assert live["default"][0].breakers["openai"].state == "open"
    # Three intervals without a report: gone ("b" last reported 33 s before).
    assert live_reports(reports, now=T0 + timedelta(seconds=38)) == {"default": [reports[1]]}


def test_lag_is_the_end_minus_the_committed_offset() -> None:
    lag = partition_lag({0: 5, 1: None, 2: -1}, {0: 0, 1: 3, 2: 0}, {0: 9, 1: 7, 2: 0, 3: 4})
    assert lag == [
        {"partition": 0, "lag": 4},
        {"partition": 1, "lag": 4},  # never committed: all that is on it
        {"partition": 2, "lag": 0},
        {"partition": 3, "lag": 4},  # no offset at all: from 0
    ]
    assert partition_lag({0: 12}, {0: 0}, {0: 10}) == [{"partition": 0, "lag": 0}]


def test_a_pools_breaker_is_its_worst_replicas() -> None:
    reports = [
        report("a", T0, openai="closed", anthropic="half_open"),
        report("b", T0, openai="open"),
    ]
    breakers = pool_breakers(reports)
    assert breakers["openai"]["state"] == "open"
    assert breakers["anthropic"]["state"] == "half_open"
    assert set(breakers["openai"]["replicas"]) == {"a", "b"}
    view = pool_view("default", "p.steps.default.v1", [{"member_id": "m"}], [], reports)
    assert view["replicas"] == 1 and view["rate_limit"] == {"per_s": 5.0, "burst": 5}
    assert pool_view("memory", "t", [], [{"partition": 0, "lag": 3}], [])["rate_limit"] is None


def test_the_memory_pool_is_read_by_the_memory_service() -> None:
    topics = Topics("p")
    assert group_of(topics, "memory") == "p-memory"
    assert group_of(topics, "gpu") == "p-executor-gpu"
    assert topics.pool_of("p.steps.gpu.v1") == "gpu"
    assert topics.pool_of("p.steps.gpu.v1.dlq") is None
    assert topics.pool_of("p.tasks.v1") is None


def test_the_executor_reports_its_breakers_and_rate_limit() -> None:
    now = [100.0]
    breakers = Breakers(failures=2, cooldown_s=30, clock=lambda: now[0])
    breakers.failed("openai")
    breakers.failed("openai")
    breakers.succeeded("local")
    r = status_report(
        pool="default",
        replica="h/executor-default-1",
        concurrency=8,
        breakers=breakers,
        rate_per_s=2.5,
        burst=None,
        interval_s=10,
        now=T0,
    )
    assert r.breakers["openai"] == BreakerStatus(state="open", failures=2, retry_in_s=30.0)
    assert r.breakers["local"].state == "closed"
    assert r.rate_limit == RateLimitStatus(per_s=2.5, burst=2)
    now[0] += 31  # the cooldown passed: the next call is the trial
    assert breakers.snapshot()["openai"][0] is State.HALF_OPEN
    unlimited = status_report(
        pool="x",
        replica="r",
        concurrency=1,
        breakers=None,
        rate_per_s=None,
        burst=None,
        interval_s=1,
        now=T0,
    )
    assert unlimited.rate_limit == RateLimitStatus() and unlimited.breakers == {}


def test_workflows_are_listed_with_their_versions(tmp_path: Path) -> None:
    (tmp_path / "a1.yaml").write_text("name: a\nversion: 1\nsteps:\n  - {id: s, uses: echo}\n")
    (tmp_path / "a2.yml").write_text(
        "name: a\nversion: 2\ndescription: two\nsteps:\n"
        "  - {id: s, uses: echo, pool: gpu}\n  - {id: t, uses: echo, needs: [s]}\n"
    )
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "tagged.yaml").write_text("name: !!int yw\n")
    (tmp_path / "notes.txt").write_text("not a workflow")
    found = {w["name"]: w for w in list_workflows(f"{tmp_path}:/no/such/folder")}
    assert sorted(found) == ["a", "bad", "tagged"]
    assert found["a"]["latest"] == 2
    assert [v["version"] for v in found["a"]["versions"]] == [2, 1]
    assert found["a"]["versions"][0]["steps"][1] == {
        "id": "t",
        "uses": "echo",
        "pool": None,
        "needs": ["s"],
    }
    assert found["bad"]["versions"][0]["problem"]
    assert found["tagged"]["versions"][0]["problem"]
    shipped = read_version(REPO / "workflows" / "hello.yaml")
    assert shipped["name"] == "hello" and shipped["problem"] is None


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = open_database(f"sqlite:///{tmp_path / 'api.db'}", HISTORY)
    yield e
    e.dispose()


def token(engine: Engine, role: tokens.Role, *tenants: str) -> dict[str, str]:
    with engine.begin() as conn:
        _, secret = tokens.create(conn, role, list(tenants))
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def answers() -> list[Any]:
    return []


@pytest.fixture
async def client(engine: Engine, answers: list[Any]) -> AsyncIterator[httpx.AsyncClient]:
    async def pools() -> list[dict[str, Any]]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return list(answer)

    app = configure(
        create_app(engine, Commands(Topics("p"))), pools=pools, workflows=str(REPO / "workflows")
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as c:
        yield c


async def test_the_routes_need_a_viewer(
    client: httpx.AsyncClient, engine: Engine, answers: list[Any]
) -> None:
    for path in ("/v1/pools", "/v1/workflows"):
        assert (await client.get(path)).status_code == 401
    viewer = token(engine, "viewer", "acme")
    answers.append([pool_view("default", "p.steps.default.v1", [], [], [report("a", T0)])])
    r = await client.get("/v1/pools", headers=viewer)
    assert r.status_code == 200
    (pool,) = r.json()["pools"]
    assert pool["name"] == "default" and pool["rate_limit"]["per_s"] == 5.0
    r = await client.get("/v1/workflows", headers=viewer)
    assert r.status_code == 200
    names = [w["name"] for w in r.json()["workflows"]]
    assert "hello" in names and names == sorted(names)


async def test_a_broker_that_cannot_be_asked_is_503(
    client: httpx.AsyncClient, engine: Engine, answers: list[Any]
) -> None:
    answers.append(PoolsUnavailable("KafkaConnectionError: down"))
    r = await client.get("/v1/pools", headers=token(engine, "operator", "*"))
    assert r.status_code == 503 and "down" in r.json()["detail"]


async def test_without_a_pool_reader_pools_are_503(engine: Engine) -> None:
    app = create_app(engine, Commands(Topics("p")))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as c:
        r = await c.get("/v1/pools", headers=token(engine, "viewer", "*"))
    assert r.status_code == 503


async def test_what_schemathesis_found_in_submit(client: httpx.AsyncClient, engine: Engine) -> None:
    """A task id beyond latin-1 broke the Location header (a 500); a workflow version
    below 1 passed the API's schema and failed the contract's (documented 422 now)."""
    h = token(engine, "submitter", "acme")
    r = await client.post("/v1/tasks", json={"task_id": "ĀĀ/1", "workflow": "hello"}, headers=h)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == "/v1/runs/%C4%80%C4%80%2F1" == r.json()["location"]
    body = {"task_id": "v0", "workflow": "hello", "workflow_version": 0}
    r = await client.post("/v1/tasks", json=body, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "workflow_version"]
    body = {"task_id": "big", "workflow": "hello", "input": {"n": 2**64}}
    r = await client.post("/v1/tasks", json=body, headers=h)  # was a 500: orjson refused it
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "input"]


def test_the_api_may_describe_the_pools_groups_and_read_their_reports() -> None:
    def allowed(user: str, op: Operation, resource: Resource, name: str) -> bool:
        return any(
            a.principal == user
            and a.operation in (op, Operation.ALL)
            and a.resource is resource
            and (name == a.name if a.pattern is Pattern.LITERAL else name.startswith(a.name))
            for a in acls("podium", ("default", "gpu"))
        )

    G, T = Resource.GROUP, Resource.TOPIC
    for group in ("podium-executor-default", "podium-executor-gpu", "podium-memory"):
        assert allowed("api", Operation.DESCRIBE, G, group), group
        assert not allowed("api", Operation.READ, G, group), group  # never joins them
    assert not allowed("api", Operation.DESCRIBE, G, "podium-router")
    assert allowed("api", Operation.READ, T, "podium.pool-status.v1")
    assert not allowed("api", Operation.WRITE, T, "podium.pool-status.v1")
    for executor in ("executor-default", "executor-gpu"):
        assert allowed(executor, Operation.WRITE, T, "podium.pool-status.v1"), executor
