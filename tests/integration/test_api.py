"""The api service over the real broker and the real service processes: submit over
HTTP, watch the run complete, list with filters and a cursor, roles and tenants,
and the projection rebuilt from the topics after its database is deleted."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_api import tokens
from podium_shared import Settings, Topics
from tests.conftest import REPO, unique_prefix
from tests.support.api import (
    api_client,
    api_stack,
    make_token,
    restart_api_on_a_new_database,
    run_of,
    tid,
    wait_status,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with api_stack(kafka_bootstrap, tmp_path_factory, "podium-api") as s:
        yield s


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(stack, timeout_s=10) as client:
        yield client


async def test_an_operator_makes_a_token_with_the_cli(stack: Stack, api: httpx.AsyncClient) -> None:
    env = {**os.environ, "PODIUM_HOME": str(stack.settings.home)}
    args = [sys.executable, "-m", "podium_api", "token", "create", "--role", "viewer"]
    done = subprocess.run(
        [*args, "--tenant", "acme"], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    secret = done.stdout.strip()
    assert secret.startswith(tokens.PREFIX) and "\n" not in secret
    headers = {"Authorization": f"Bearer {secret}"}
    assert (await api.get("/v1/runs", headers=headers)).status_code == 200


async def test_submit_over_http_and_watch_the_run_complete(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    h = make_token(stack, "submitter", "acme")
    task_id = tid("hello")
    body = {"task_id": task_id, "workflow": "hello", "input": {"text": "hi"}, "subject": "u1"}
    r = await api.post("/v1/tasks", json=body, headers=h)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/runs/{task_id}"
    again = await api.post("/v1/tasks", json=body, headers=h)
    assert (again.status_code, again.json()["status"]) == (202, "exists")
    run = await wait_status(api, task_id, h, "completed")
    assert (run["tenant"], run["workflow"], run["subject"]) == ("acme", "hello", "u1")
    assert run["input"] == {"text": "hi"}
    assert run["output"] == {"text": "hi"}
    assert run["accepted_at"] is not None and run["finished_at"] is not None
    (step,) = run["steps"]
    assert (step["step_id"], step["status"], step["attempts"]) == ("echo", "completed", 1)
    assert step["pool"] == "default" and step["duration_ms"] is not None


async def test_list_with_filters_and_a_cursor(stack: Stack, api: httpx.AsyncClient) -> None:
    h = make_token(stack, "submitter", "acme")
    batch = tid("page")
    ids = [f"{batch}-{i}" for i in range(5)]
    for task_id in ids:
        body = {"task_id": task_id, "workflow": "hello", "subject": batch}
        assert (await api.post("/v1/tasks", json=body, headers=h)).status_code == 202
    for task_id in ids:
        await wait_status(api, task_id, h, "completed")
    seen: list[str] = []
    params: dict[str, Any] = {"subject": batch, "status": "completed", "limit": 2}
    pages = 0
    while True:
        page = (await api.get("/v1/runs", params=params, headers=h)).json()
        seen += [r["task_id"] for r in page["items"]]
        pages += 1
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert pages == 3
    assert sorted(seen) == sorted(ids)
    found = (await api.get("/v1/runs", params={"q": f"{batch}-3"}, headers=h)).json()["items"]
    assert [r["task_id"] for r in found] == [f"{batch}-3"]
    none = await api.get("/v1/runs", params={"subject": batch, "status": "failed"}, headers=h)
    assert none.json()["items"] == []


async def test_roles_and_no_token(stack: Stack, api: httpx.AsyncClient) -> None:
    viewer = make_token(stack, "viewer", "acme")
    submitter = make_token(stack, "submitter", "acme")
    task_id = tid("roles")
    body = {"task_id": task_id, "workflow": "hello"}
    assert (await api.get("/v1/runs")).status_code == 401
    assert (await api.post("/v1/tasks", json=body)).status_code == 401
    assert (await api.post("/v1/tasks", json=body, headers=viewer)).status_code == 403
    assert (await api.post("/v1/tasks", json=body, headers=submitter)).status_code == 202
    await wait_status(api, task_id, viewer, "completed")
    assert (await api.post(f"/v1/runs/{task_id}/cancel", headers=viewer)).status_code == 403
    assert (await api.post(f"/v1/runs/{task_id}/cancel", headers=submitter)).status_code == 403


async def test_a_tenant_token_sees_nothing_of_another_tenant(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    a = make_token(stack, "operator", "tenant-a")
    b = make_token(stack, "operator", "tenant-b")
    task_id = tid("secret")
    body = {"task_id": task_id, "workflow": "hello", "subject": "b-only"}
    assert (await api.post("/v1/tasks", json=body, headers=b)).status_code == 202
    await wait_status(api, task_id, b, "completed")
    assert (await api.get(f"/v1/runs/{task_id}", headers=a)).status_code == 404
    listed = await api.get("/v1/runs", params={"q": task_id}, headers=a)
    assert listed.json()["items"] == []
    by_subject = await api.get("/v1/runs", params={"subject": "b-only"}, headers=a)
    assert by_subject.json()["items"] == []
    assert (await api.post(f"/v1/runs/{task_id}/cancel", headers=a)).status_code == 404
    # Its task id is not A's to take either.
    taken = await api.post("/v1/tasks", json=body | {"subject": None}, headers=a)
    assert taken.status_code == 409


SseEvent = tuple[int, dict[str, Any]]


async def sse_runs(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """The ``run`` events of a Server-Sent Events response: (id, data)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields.get("event") == "run":
                yield int(fields["id"]), json.loads(fields["data"])
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def until_task(events: AsyncIterator[SseEvent], task_id: str, status: str) -> list[SseEvent]:
    """Every event up to and including ``task_id`` reaching ``status``."""
    seen: list[SseEvent] = []

    async def read() -> None:
        async for event in events:
            seen.append(event)
            if (event[1]["task_id"], event[1]["status"]) == (task_id, status):
                return
        raise AssertionError(f"the stream ended before {task_id} was {status}")

    await asyncio.wait_for(read(), 60)
    return seen


async def test_live_updates_stream_a_run_resume_without_loss_and_stay_in_the_tenant(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    a, b = tid("live-a"), tid("live-b")
    mine, theirs = make_token(stack, "submitter", a), make_token(stack, "submitter", b)
    task_id, marker = tid("live"), tid("marker")
    timeout = httpx.Timeout(10, read=60)  # a quiet stream still beats every ~15 s
    async with (
        httpx.AsyncClient(base_url=stack.api_url, timeout=timeout) as client,
        client.stream("GET", "/v1/events", headers=mine) as stream_a,
        client.stream("GET", "/v1/events", headers=theirs) as stream_b,
    ):
        assert stream_a.status_code == 200, await stream_a.aread()
        assert stream_a.headers["content-type"].startswith("text/event-stream")
        body = {"task_id": task_id, "workflow": "hello", "input": {"text": "live"}}
        assert (await api.post("/v1/tasks", json=body, headers=mine)).status_code == 202
        events_a = sse_runs(stream_a)
        seen = await until_task(events_a, task_id, "completed")
        assert {e["task_id"] for _, e in seen} == {task_id}
        assert all(e["tenant"] == a for _, e in seen)
        ids = [i for i, _ in seen]
        assert ids == sorted(set(ids))
        assert seen[-1][1]["finished_at"] is not None and "input" not in seen[-1][1]
        # B's stream: B's own run arrives, and nothing of A's came before it.
        other = {"task_id": marker, "workflow": "hello"}
        assert (await api.post("/v1/tasks", json=other, headers=theirs)).status_code == 202
        events_b = sse_runs(stream_b)
        seen_b = await until_task(events_b, marker, "completed")
        assert {e["task_id"] for _, e in seen_b} == {marker}
        assert all(e["tenant"] == b for _, e in seen_b)
        await events_a.aclose()
        await events_b.aclose()

    # Reconnecting from before the run's first event: the run once, as it is now; after
    # the last one: nothing again (an A run submitted afterwards is the first to come).
    first, last = ids[0] - 1, ids[-1]
    later = tid("later")
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=timeout) as client:
        async with client.stream(
            "GET", "/v1/events", headers=mine | {"Last-Event-ID": str(first)}
        ) as again:
            body = {"task_id": later, "workflow": "hello"}
            assert (await api.post("/v1/tasks", json=body, headers=mine)).status_code == 202
            events = sse_runs(again)
            resumed = await until_task(events, later, "completed")
            await events.aclose()
        assert resumed[0] == (last, seen[-1][1])
        assert [e["status"] for _, e in resumed if e["task_id"] == task_id] == ["completed"]
        async with client.stream(
            "GET", "/v1/events", headers=mine | {"Last-Event-ID": str(last)}
        ) as after_last:
            events = sse_runs(after_last)
            rest = await until_task(events, later, "completed")
            await events.aclose()
        assert {e["task_id"] for _, e in rest} == {later}
        assert all(i > last for i, _ in rest)


async def test_dead_letters_are_summarized_per_tenant(stack: Stack, api: httpx.AsyncClient) -> None:
    """Two submissions the router dead-letters: one naming a tenant (but no task, so
    no run is rejected: the rebuild test below expects only completed runs), one that
    is not JSON. Its tenant sees only its own; a token of every tenant sees both;
    another tenant sees neither."""
    tenant = tid("dlq")
    mine, every = make_token(stack, "viewer", tenant), make_token(stack, "operator", "*")
    stranger = make_token(stack, "viewer", tid("stranger"))
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_type", b"podium.task.submitted.v1"),
        ("ce_source", b"test"),
        ("content-type", b"application/json"),
    ]
    invalid = json.dumps({"workflow": "hello", "tenant": tenant}).encode()
    async with PodiumClient(stack.settings) as client:
        for value in (invalid, b"\xff{not json"):
            await client.submit_raw(value, [("ce_id", tid("ce").encode()), *headers])
    dlq = Topics(stack.settings.topic_prefix).dlq(Topics(stack.settings.topic_prefix).tasks)

    async def tasks_dlq(h: dict[str, str]) -> dict[str, Any]:
        r = await api.get("/v1/dead-letters", headers=h, timeout=120)  # reads every DLQ
        assert r.status_code == 200, r.text
        return {t["topic"]: t for t in r.json()["topics"]}.get(dlq, {})

    async def both_in() -> bool:
        reasons = {g["reason"] for g in (await tasks_dlq(every)).get("groups", [])}
        return (await tasks_dlq(mine)).get("count") == 1 and "undecodable" in reasons

    await wait_until(both_in, 90, "both refusals in the tasks DLQ")
    own = await tasks_dlq(mine)
    assert [(g["reason"], g["count"]) for g in own["groups"]] == [("invalid", 1)]
    assert own["oldest"] == own["newest"] is not None
    assert (await tasks_dlq(every))["count"] >= 2
    assert (await tasks_dlq(stranger))["count"] == 0


async def test_the_projection_is_rebuilt_from_the_topics_after_its_database_is_deleted(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """Last in this module: it replaces the api's database (and so its tokens). Its own
    runs, in two tenants, are enough; the module's earlier ones are compared too."""
    h = make_token(stack, "operator", "*")
    ids = [tid("rebuild") for _ in range(5)]
    for i, task_id in enumerate(ids):
        body = {"task_id": task_id, "workflow": "hello", "subject": f"s{i}"}
        submitter = make_token(stack, "submitter", f"rebuild-{i % 2}")
        assert (await api.post("/v1/tasks", json=body, headers=submitter)).status_code == 202
    for task_id in ids:
        await wait_status(api, task_id, h, "completed")

    async def everything(headers: dict[str, str]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        params: dict[str, Any] = {"limit": 200}
        while True:
            page = (await api.get("/v1/runs", params=params, headers=headers)).json()
            rows += [
                (r["task_id"], r["status"], r["tenant"], r["workflow"], r["subject"])
                for r in page["items"]
            ]
            if page["next_cursor"] is None:
                return rows
            params["cursor"] = page["next_cursor"]

    before = await everything(h)
    assert set(ids) <= {r[0] for r in before}
    assert all(r[1] == "completed" for r in before)
    details = {r[0]: await run_of(api, r[0], h) for r in before}
    await restart_api_on_a_new_database(stack, api)
    h = make_token(stack, "operator", "*")  # the old token went with the database

    async def rebuilt() -> bool:
        return await everything(h) == before

    await wait_until(rebuilt, 60, "the same runs rebuilt from the topics")
    for task_id, detail in details.items():
        again = await run_of(api, task_id, h)
        for key in ("status", "input", "output", "created_at", "accepted_at", "finished_at"):
            assert again[key] == detail[key], (task_id, key)
        assert [s["status"] for s in again["steps"]] == [s["status"] for s in detail["steps"]]


@pytest.mark.kafka_only
async def test_the_api_runs_as_its_own_principal_on_a_secure_stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Its ACLs are enough and no more than it uses: it joins its per-database group,
    reads the run's story and publishes the submission, as principal ``api``."""
    settings = Settings(
        broker="kafka",
        home=tmp_path_factory.mktemp("podium-api-secure"),
        topic_prefix=unique_prefix(),
        workflows=str(REPO / "workflows"),
    )
    with Stack(settings, secure=True, api=True) as stack:
        async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as api:
            h = make_token(stack, "submitter", "acme")
            task_id = tid("secure")
            body = {"task_id": task_id, "workflow": "hello", "input": {"a": 1}}
            assert (await api.post("/v1/tasks", json=body, headers=h)).status_code == 202
            run = await wait_status(api, task_id, h, "completed")
            assert run["output"] == {"a": 1}
            # Its Read on the DLQs is enough to summarize them; those it may not read
            # are left out rather than failing the request.
            r = await api.get("/v1/dead-letters", headers=h, timeout=120)
            assert r.status_code == 200, r.text
            listed = {t["topic"] for t in r.json()["topics"]}
            topics = Topics(settings.topic_prefix)
            assert topics.dlq(topics.tasks) in listed
    secret = (stack.settings.home / "secrets" / "api.password").stat()
    assert secret.st_mode & 0o077 == 0  # the api's password file is private like the others'
