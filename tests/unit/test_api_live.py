"""Live updates (``/v1/events``) in-process: every change of a run takes the next
change number, a stream sends its tenants' changes after its cursor in order and then
each as it commits, resumes after ``Last-Event-ID`` with nothing twice, beats while
quiet, and ends when the service closes the streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy.engine import Engine

from podium.stack import free_port
from podium_api import projection, queries, tokens
from podium_api.app import create_app
from podium_api.http import serve_http
from podium_api.live import HEARTBEAT, Changes, Stream
from podium_api.migrations import HISTORY
from podium_api.service import Commands
from podium_api.tokens import Principal
from podium_contracts import TaskCancelRequested, TaskSubmitted
from podium_shared import Topics
from podium_shared.migrations import open_database
from tests.support.waiting import wait_until

pytestmark = pytest.mark.unit

EVERY = Principal("t", "viewer", ("*",))
ACME = Principal("t", "viewer", ("acme",))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    e = open_database(database_url, HISTORY)
    yield e
    e.dispose()


def submit(engine: Engine, task_id: str, tenant: str, at: float, workflow: str = "wf") -> None:
    with engine.begin() as conn:
        task = TaskSubmitted(task_id=task_id, workflow=workflow, tenant=tenant)
        projection.task_submitted(conn, task, at)


def seqs(engine: Engine, who: Principal = EVERY, after: int = 0) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        rows = queries.changes_after(conn, who, queries.ChangeFilter(), after, limit=100)
    return [(r["task_id"], r["seq"]) for r in rows]


def test_each_change_of_a_run_takes_the_next_number_and_a_repeat_none(engine: Engine) -> None:
    with engine.connect() as conn:
        assert queries.latest_change(conn) == 0
    submit(engine, "a", "acme", 10)
    submit(engine, "b", "other", 11)
    assert seqs(engine) == [("a", 1), ("b", 2)]
    submit(engine, "a", "acme", 10)  # tells nothing new: no write, no change
    assert seqs(engine) == [("a", 1), ("b", 2)]
    with engine.begin() as conn:
        projection.task_cancel_requested(
            conn, TaskCancelRequested(task_id="a", reason="r", tenant="acme"), 12
        )
    # A run changed again is listed once, at its latest change.
    assert seqs(engine) == [("b", 2), ("a", 3)]
    assert seqs(engine, after=2) == [("a", 3)]
    assert seqs(engine, ACME) == [("a", 3)]
    with engine.connect() as conn:
        assert queries.latest_change(conn) == 3
        only = queries.changes_after(conn, EVERY, queries.ChangeFilter(tenant="other"), 0, limit=10)
        assert [r["task_id"] for r in only] == ["b"]
        none = queries.changes_after(
            conn, EVERY, queries.ChangeFilter(status="completed"), 0, limit=10
        )
        assert none == []


def parse(chunk: bytes) -> list[tuple[int, dict[str, Any]]]:
    """The run events in a stream's bytes: (id, data)."""
    found = []
    for block in chunk.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") == "run":
            found.append((int(lines["id"]), orjson.loads(lines["data"])))
    return found


async def test_a_stream_sends_the_backlog_then_each_change_as_it_commits(
    engine: Engine,
) -> None:
    submit(engine, "old", "acme", 1)
    submit(engine, "theirs", "other", 2)
    changes = Changes()
    stream = Stream(
        engine,
        changes,
        render=lambda row: orjson.dumps({"task_id": row["task_id"]}).decode(),
        heartbeat_s=30,
    )
    got: list[bytes] = []

    async def read() -> None:
        async for chunk in stream.events(ACME, queries.ChangeFilter(), 0):
            got.append(chunk)

    reader = asyncio.create_task(read())
    await wait_until(lambda: len(parse(b"".join(got))) == 1, 10, "the backlog")
    await asyncio.to_thread(submit, engine, "new", "acme", 3)
    await asyncio.to_thread(submit, engine, "not-mine", "other", 4)
    changes.notify()  # as the projection does once its transaction has committed
    await wait_until(lambda: len(parse(b"".join(got))) == 2, 5, "the new change, woken")
    changes.close()
    await asyncio.wait_for(reader, 10)  # a closed stream ends
    events = parse(b"".join(got))
    assert [(i, e["task_id"]) for i, e in events] == [(1, "old"), (3, "new")]
    assert got[0] == b"retry: 2000\n\n"


async def test_a_quiet_stream_beats(engine: Engine) -> None:
    changes = Changes()
    stream = Stream(engine, changes, render=str, heartbeat_s=0.2, poll_s=0.05)
    events = stream.events(EVERY, queries.ChangeFilter(), 0)
    assert await anext(events) == b"retry: 2000\n\n"
    assert await asyncio.wait_for(anext(events), 10) == HEARTBEAT
    changes.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(events), 10)


@pytest.fixture
def closed() -> Changes:
    """Streams over closed changes send what is committed and end: the ASGI test
    transport waits for a response's end."""
    changes = Changes()
    changes.close()
    return changes


@pytest.fixture
async def client(engine: Engine, closed: Changes) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(engine, Commands(Topics("p")), changes=closed)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api") as c:
        yield c


def token(engine: Engine, role: tokens.Role, *tenants: str) -> dict[str, str]:
    with engine.begin() as conn:
        _, secret = tokens.create(conn, role, list(tenants))
    return {"Authorization": f"Bearer {secret}"}


async def test_the_route_needs_a_token_and_scopes_and_resumes(
    client: httpx.AsyncClient, engine: Engine
) -> None:
    assert (await client.get("/v1/events")).status_code == 401
    for i in range(3):
        submit(engine, f"acme-{i}", "acme", i, workflow="w" if i else "x")
    submit(engine, "other-0", "other", 10)
    h = token(engine, "viewer", "acme")
    r = await client.get("/v1/events", params={"after": 0}, headers=h)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse(r.content)
    assert [(i, e["task_id"]) for i, e in events] == [(1, "acme-0"), (2, "acme-1"), (3, "acme-2")]
    assert events[0][1]["tenant"] == "acme" and "input" not in events[0][1]
    resumed = await client.get("/v1/events", headers=h | {"Last-Event-ID": "2"})
    assert [e["task_id"] for _, e in parse(resumed.content)] == ["acme-2"]
    # The header wins over ?after=: a browser reconnects to the same URL with it.
    both = await client.get("/v1/events", params={"after": 0}, headers=h | {"Last-Event-ID": "3"})
    assert parse(both.content) == []
    filtered = await client.get("/v1/events", params={"after": 0, "workflow": "x"}, headers=h)
    assert [e["task_id"] for _, e in parse(filtered.content)] == ["acme-0"]
    # Without a cursor a stream starts now: nothing committed before it is sent.
    assert parse((await client.get("/v1/events", headers=h)).content) == []
    bad = await client.get("/v1/events", headers=h | {"Last-Event-ID": "nope"})
    assert bad.status_code == 400
    everyone = token(engine, "viewer", "*")
    every = await client.get("/v1/events", params={"after": 0}, headers=everyone)
    assert len(parse(every.content)) == 4


async def test_the_server_stops_with_a_stream_open(engine: Engine) -> None:
    """A live stream never ends by itself: the server closes the streams when the
    runtime cancels it, or it would wait for them for ever."""
    port = free_port()
    h = token(engine, "viewer", "*")
    make = lambda notify: create_app(engine, Commands(Topics("p")), notify=notify)  # noqa: E731
    task = asyncio.create_task(serve_http(make, "127.0.0.1", port)(Relay()))  # type: ignore[arg-type]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:

        async def up() -> bool:
            try:
                return (await c.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(up, 20, "the server answering")
        async with c.stream("GET", "/v1/events", headers=h) as r:
            assert r.status_code == 200
            lines = r.aiter_lines()
            assert await anext(lines) == "retry: 2000"
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 10)
            rest = [line async for line in lines]
    assert rest == [""]  # the stream ended with the server


class Relay:
    def notify(self) -> None:
        pass
