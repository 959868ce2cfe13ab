"""The operators' HTTP API in-process (FastAPI's TestClient over a SQLite projection):
authentication, roles, tenant isolation, filters, cursor pages, submit and cancel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_api import projection, tokens
from podium_api.app import create_app
from podium_api.migrations import HISTORY
from podium_api.service import Commands
from podium_api.state import actions
from podium_contracts import TaskSubmitted
from podium_shared import Topics, db
from podium_shared.migrations import open_database

pytestmark = pytest.mark.unit

TOPICS = Topics("p")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """On SQLite and PostgreSQL: the row-value cursor and the JSON columns on both."""
    e = open_database(database_url, HISTORY)
    yield e
    e.dispose()


@pytest.fixture
def woken() -> list[int]:
    return []


@pytest.fixture
async def client(engine: Engine, woken: list[int]) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine, Commands(TOPICS), notify=lambda: woken.append(1), page_max=100)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as c:
        yield c


def token(engine: Engine, role: tokens.Role, *tenants: str) -> dict[str, str]:
    with engine.begin() as conn:
        _, secret = tokens.create(conn, role, list(tenants))
    return {"Authorization": f"Bearer {secret}"}


def seed(engine: Engine, n: int, tenant: str, *, workflow: str = "wf", start: float = 0) -> None:
    with engine.begin() as conn:
        for i in range(n):
            task = TaskSubmitted(
                task_id=f"{tenant}-{i:04d}", workflow=workflow, tenant=tenant, subject=f"s{i % 3}"
            )
            projection.task_submitted(conn, task, 1_000 + start + i)


def outbox(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(db.outbox).order_by(db.outbox.c.id)))


async def test_health_is_anonymous_and_nothing_else_is(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    for method, path in [
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/x"),
        ("POST", "/v1/tasks"),
        ("POST", "/v1/runs/x/cancel"),
    ]:
        r = await client.request(method, path)
        assert r.status_code == 401, (method, path)
        assert r.headers["www-authenticate"] == "Bearer"
    bad = await client.get("/v1/runs", headers={"Authorization": "Bearer pdm_nope"})
    assert bad.status_code == 401


async def test_an_unknown_token_is_told_401_before_a_bad_parameter_is_told_422(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    """The hot reads check their token inside the route, after FastAPI validated the
    parameters: a stranger must not learn the route's shape from a 422."""
    bad_params = {"limit": "-5", "cursor": "%%%"}
    for auth in ({"Authorization": "Bearer pdm_nope"}, {"Authorization": "Basic eDp5"}):
        r = await client.get("/v1/runs", params=bad_params, headers=auth)
        assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer"), r.text
    assert (await client.get("/v1/runs", params=bad_params)).status_code == 401
    assert (
        await client.get("/v1/runs", params=bad_params, headers=token(engine, "viewer", "*"))
    ).status_code == 422


async def test_a_revoked_token_is_refused(client: httpx.AsyncClient, engine: Engine) -> None:
    with engine.begin() as conn:
        token_id, secret = tokens.create(conn, "viewer", ["*"])
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await client.get("/v1/runs", headers=headers)).status_code == 200
    with engine.begin() as conn:
        assert tokens.revoke(conn, token_id)
    assert (await client.get("/v1/runs", headers=headers)).status_code == 401


async def test_tokens_are_stored_as_digests(engine: Engine) -> None:
    with engine.begin() as conn:
        _, secret = tokens.create(conn, "viewer", ["a"])
        stored = conn.execute(sa.select(tokens.tokens)).mappings().one()
    assert secret.startswith(tokens.PREFIX) and len(secret) > 40
    assert secret not in repr(dict(stored))
    assert stored["digest"] == tokens.digest(secret)


async def test_a_tenant_token_sees_only_its_tenants_runs(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    seed(engine, 3, "a")
    seed(engine, 2, "b")
    a = token(engine, "operator", "a")
    listed = (await client.get("/v1/runs", headers=a)).json()["items"]
    assert {r["task_id"] for r in listed} == {"a-0000", "a-0001", "a-0002"}
    assert (await client.get("/v1/runs", params={"tenant": "b"}, headers=a)).json()["items"] == []
    # Another tenant's run is absent, not forbidden: the same 404 as a run that is not there.
    assert (await client.get("/v1/runs/b-0000", headers=a)).status_code == 404
    assert (await client.get("/v1/runs/nothing", headers=a)).status_code == 404
    assert (await client.post("/v1/runs/b-0000/cancel", headers=a)).status_code == 404
    assert (await client.get("/v1/runs/a-0000", headers=a)).status_code == 200
    everyone = token(engine, "viewer", "*")
    assert len((await client.get("/v1/runs", headers=everyone)).json()["items"]) == 5


async def test_filters(client: httpx.AsyncClient, engine: Engine) -> None:
    seed(engine, 6, "a")
    seed(engine, 2, "a2", workflow="other", start=100)
    h = token(engine, "viewer", "*")

    async def ids(**params: Any) -> list[str]:
        r = await client.get("/v1/runs", params=params, headers=h)
        assert r.status_code == 200, r.text
        return [x["task_id"] for x in r.json()["items"]]

    assert await ids(workflow="other") == ["a2-0001", "a2-0000"]
    assert await ids(subject="s1") == ["a2-0001", "a-0004", "a-0001"]
    assert await ids(q="2-000") == ["a2-0001", "a2-0000"]
    assert await ids(q="%") == []  # a LIKE wildcard is searched for, not obeyed
    assert await ids(status="submitted", tenant="a2") == ["a2-0001", "a2-0000"]
    assert await ids(status="completed") == []
    assert await ids(since="1970-01-01T00:16:42Z", until="1970-01-01T00:16:44Z") == [
        "a-0003",
        "a-0002",
    ]


async def test_cursor_pages_cover_every_run_once_newest_first(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    seed(engine, 23, "a")
    with engine.begin() as conn:  # two runs with the same created_at: the task id breaks the tie
        projection.task_submitted(
            conn, TaskSubmitted(task_id="tie", workflow="wf", tenant="a"), 1_005
        )
    h = token(engine, "viewer", "a")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/runs", params=params, headers=h)).json()
        seen += [r["task_id"] for r in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5
    assert len(seen) == len(set(seen)) == 24
    assert seen.index("tie") == seen.index("a-0005") - 1  # "tie" > "a-0005": first in DESC
    bad = await client.get("/v1/runs", params={"cursor": "garbage!"}, headers=h)
    assert bad.status_code == 400


async def test_roles(client: httpx.AsyncClient, engine: Engine) -> None:
    seed(engine, 1, "a")
    viewer = token(engine, "viewer", "a")
    submitter = token(engine, "submitter", "a")
    body = {"task_id": "new", "workflow": "wf"}
    assert (await client.post("/v1/tasks", json=body, headers=viewer)).status_code == 403
    assert (await client.post("/v1/runs/a-0000/cancel", headers=viewer)).status_code == 403
    assert (await client.post("/v1/runs/a-0000/cancel", headers=submitter)).status_code == 403
    assert (await client.post("/v1/tasks", json=body, headers=submitter)).status_code == 202
    assert outbox(engine)  # only the submitter's submission was sent


async def test_submit_publishes_once_per_task_id(
    client: httpx.AsyncClient, engine: Engine, woken: list[int]
) -> None:
    h = token(engine, "submitter", "a")
    body = {"task_id": "t1", "workflow": "wf", "input": {"x": 1}, "subject": "s"}
    first = await client.post("/v1/tasks", json=body, headers=h)
    assert first.status_code == 202
    assert first.headers["location"] == "/v1/runs/t1"
    assert first.json() == {"task_id": "t1", "status": "published", "location": "/v1/runs/t1"}
    again = await client.post("/v1/tasks", json=body, headers=h)
    assert again.status_code == 202 and again.json()["status"] == "exists"
    (row,) = outbox(engine)
    assert row.topic == TOPICS.tasks and row.key == b"t1"
    sent = orjson.loads(row.value)
    assert (sent["task_id"], sent["tenant"], sent["input"]) == ("t1", "a", {"x": 1})
    assert woken == [1]
    run = (await client.get("/v1/runs/t1", headers=h)).json()  # visible at once, before the topic
    assert (run["status"], run["tenant"], run["input"]) == ("submitted", "a", {"x": 1})
    with engine.connect() as conn:
        (done,) = conn.execute(sa.select(actions)).mappings()
    assert (done["action"], done["task_id"]) == ("submit", "t1")


async def test_submit_refuses_a_tenant_outside_the_token_and_another_tenants_task_id(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    seed(engine, 1, "b")
    h = token(engine, "submitter", "a")
    assert (
        await client.post(
            "/v1/tasks", json={"task_id": "x", "workflow": "wf", "tenant": "b"}, headers=h
        )
    ).status_code == 403
    taken = await client.post("/v1/tasks", json={"task_id": "b-0000", "workflow": "wf"}, headers=h)
    assert taken.status_code == 409
    assert (await client.post("/v1/tasks", json={"workflow": "wf"}, headers=h)).status_code == 422
    assert outbox(engine) == []


async def test_cancel(client: httpx.AsyncClient, engine: Engine) -> None:
    seed(engine, 1, "a")
    h = token(engine, "operator", "a")
    r = await client.post("/v1/runs/a-0000/cancel", json={"reason": "stuck"}, headers=h)
    assert r.status_code == 202
    (row,) = outbox(engine)
    assert row.topic == TOPICS.tasks
    assert orjson.loads(row.value) == {"task_id": "a-0000", "reason": "stuck", "tenant": "a"}
    assert (await client.get("/v1/runs/a-0000", headers=h)).json()[
        "cancel_requested_at"
    ] is not None
    with engine.begin() as conn:
        projection.upsert_run(conn, "a-0000", 2_000, "cancelled", {})
    assert (await client.post("/v1/runs/a-0000/cancel", headers=h)).status_code == 409
    with engine.connect() as conn:
        (done,) = conn.execute(sa.select(actions)).mappings()
    assert (done["action"], done["detail"]) == ("cancel", "stuck")


async def test_the_runs_list_and_a_run_take_one_connection_each(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    """The token is checked on the connection of the query (one pool checkout, one
    thread-pool hop): the token's lookup no longer takes a connection of its own."""
    seed(engine, 3, "a")
    headers = token(engine, "viewer", "a")
    checkouts: list[int] = []

    def counted(*_: object) -> None:
        checkouts.append(1)

    sa.event.listen(engine, "checkout", counted)
    try:
        assert (await client.get("/v1/runs", headers=headers)).status_code == 200
        assert len(checkouts) == 1
        assert (await client.get("/v1/runs/a-0001", headers=headers)).status_code == 200
        assert len(checkouts) == 2
        assert (await client.get("/v1/runs", headers=token(engine, "viewer", "b"))).json()[
            "items"
        ] == []
    finally:
        sa.event.remove(engine, "checkout", counted)


async def test_the_runs_list_and_a_run_take_one_thread_pool_hop(
    client: httpx.AsyncClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load each hop is a wait for a thread and for the loop: the token, the role,
    the query and the response's serialisation took four; now the route's one."""
    import fastapi.dependencies.utils
    import fastapi.routing
    from starlette.concurrency import run_in_threadpool

    seed(engine, 3, "a")
    headers = token(engine, "viewer", "a")
    hops: list[object] = []

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await run_in_threadpool(func, *args, **kwargs)

    for module in (fastapi.routing, fastapi.dependencies.utils):
        monkeypatch.setattr(module, "run_in_threadpool", counted)
    listed = await client.get("/v1/runs", headers=headers)
    assert listed.status_code == 200 and len(listed.json()["items"]) == 3
    assert len(hops) == 1
    one = await client.get("/v1/runs/a-0001", headers=headers)
    assert one.status_code == 200 and one.json()["task_id"] == "a-0001"
    assert len(hops) == 2
