"""The api service over the real broker and the real service processes: submit over
HTTP, watch the run complete, list with filters and a cursor, roles and tenants,
and the projection rebuilt from the topics after its database is deleted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from podium.stack import Stack
from podium_api import tokens
from podium_shared import Settings
from podium_shared.db import connect
from tests.conftest import REPO, stack_settings, unique_prefix
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("podium-api")
    with Stack(stack_settings(kafka_bootstrap, home), api=True) as s:
        yield s


def make_token(stack: Stack, role: tokens.Role, *tenants: str) -> dict[str, str]:
    """A token in the running service's database (the CLI's own test is below: each
    call is a Python start-up, seconds on a loaded machine)."""
    engine = connect(stack.settings.database_url("api"))
    try:
        with engine.begin() as conn:
            _, secret = tokens.create(conn, role, list(tenants))
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {secret}"}


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


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=10) as client:

        async def healthy() -> bool:
            try:
                return (await client.get("/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(healthy, 30, "the api answering /healthz")
        yield client


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def run_of(api: httpx.AsyncClient, task_id: str, headers: dict[str, str]) -> dict[str, Any]:
    r = await api.get(f"/v1/runs/{task_id}", headers=headers)
    return r.json() if r.status_code == 200 else {}


async def wait_status(
    api: httpx.AsyncClient, task_id: str, headers: dict[str, str], status: str
) -> dict[str, Any]:
    async def reached() -> bool:
        return (await run_of(api, task_id, headers)).get("status") == status

    await wait_until(reached, 60, f"{task_id} {status}")
    return await run_of(api, task_id, headers)


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


async def test_the_projection_is_rebuilt_from_the_topics_after_its_database_is_deleted(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """Last in this module: it replaces the api's database (and so its tokens)."""
    h = make_token(stack, "operator", "*")
    task_id = tid("rebuild")
    assert (
        await api.post("/v1/tasks", json={"task_id": task_id, "workflow": "hello"}, headers=h)
    ).status_code == 202
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
    assert len(before) >= 5 and all(r[1] == "completed" for r in before)
    details = {r[0]: await run_of(api, r[0], h) for r in before}
    (proc,) = [p for p in stack.processes if p.name == "api"]
    stack.kill(proc, signal.SIGTERM)
    for suffix in ("", "-wal", "-shm"):
        (stack.settings.home / f"api.db{suffix}").unlink(missing_ok=True)
    stack.respawn(proc)

    async def serving() -> bool:
        try:
            return (await api.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_until(serving, 60, "the api answering again")
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
    secret = (stack.settings.home / "secrets" / "api.password").stat()
    assert secret.st_mode & 0o077 == 0  # the api's password file is private like the others'
