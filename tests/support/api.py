"""The api over a real stack, for the integration tests of test_api*.py: the stack with
the api (``api_stack``), a client once it answers (``api_client``), tokens made in its
database, a run read and waited for, and the api restarted on a new database."""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import pytest

from podium.stack import Stack
from podium_api import tokens
from podium_shared.db import connect
from tests.conftest import stack_settings
from tests.support.waiting import wait_until


@contextmanager
def api_stack(
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    *,
    env: dict[str, str] | None = None,
    executors: int = 1,
    start_timeout_s: float = 60.0,
) -> Iterator[Stack]:
    """A stack with the api in a new home ``<name>``, for a module's ``stack`` fixture."""
    home = tmp_path_factory.mktemp(name)
    stack = Stack(
        stack_settings(kafka_bootstrap, home), api=True, executors=executors, env=env or {}
    )
    stack.start(timeout_s=start_timeout_s)
    try:
        yield stack
    finally:
        stack.stop()


async def serving(client: httpx.AsyncClient) -> bool:
    try:
        return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


@asynccontextmanager
async def api_client(stack: Stack, timeout_s: float = 30) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the stack's api, once it answers /healthz."""
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=timeout_s) as client:
        await wait_until(lambda: serving(client), 30, "the api answering /healthz")
        yield client


def make_token(stack: Stack, role: tokens.Role, *tenants: str, name: str = "") -> dict[str, str]:
    """The headers of a new token in the running api's database (the CLI's own test is
    in test_api.py: each call of it is a Python start-up, seconds on a loaded machine)."""
    engine = connect(stack.settings.database_url("api"))
    try:
        with engine.begin() as conn:
            _, secret = tokens.create(conn, role, list(tenants), name)
    finally:
        engine.dispose()
    return {"Authorization": f"Bearer {secret}"}


def tid(name: str) -> str:
    """A task id (or tenant) no other test uses."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def run_of(api: httpx.AsyncClient, task_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """``GET /v1/runs/{task_id}``, or {} while the api does not show it."""
    r = await api.get(f"/v1/runs/{task_id}", headers=headers)
    return r.json() if r.status_code == 200 else {}


async def wait_status(
    api: httpx.AsyncClient,
    task_id: str,
    headers: dict[str, str],
    status: str,
    timeout_s: float = 90,
) -> dict[str, Any]:
    """The run, once it has ``status``."""

    async def reached() -> bool:
        return (await run_of(api, task_id, headers)).get("status") == status

    await wait_until(reached, timeout_s, f"{task_id} {status}")
    return await run_of(api, task_id, headers)


async def restart_api_on_a_new_database(stack: Stack, api: httpx.AsyncClient) -> None:
    """Stop the api, delete its SQLite database (projection and tokens), start it again
    and wait until it answers: it rebuilds the projection from the topics."""
    (proc,) = [p for p in stack.processes if p.name == "api"]
    stack.kill(proc, signal.SIGTERM)
    for suffix in ("", "-wal", "-shm"):
        (stack.settings.home / f"api.db{suffix}").unlink(missing_ok=True)
    stack.respawn(proc)
    await wait_until(lambda: serving(api), 60, "the api answering again")
