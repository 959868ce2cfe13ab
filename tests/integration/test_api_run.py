"""One run, complete, over the real broker and the real service processes: a run
submitted over HTTP through a DAG across every service (memory, a step recovery
retries, an LLM chat with usage, an echo joining them). Its page shows each step with
what it depends on, its usage, its history (the router's entries with cause and next
action, learned from the topics, the same as the router's own) and its trace (one
trace, spans of every service); another tenant gets 404 for all of it; the history
is the same after the api's database is deleted and rebuilt from the topics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from podium.stack import Stack
from podium_router.state import history as router_history
from podium_shared.db import connect
from tests.support.api import (
    api_client,
    api_stack,
    make_token,
    restart_api_on_a_new_database,
    wait_status,
)
from tests.support.fake_openai import FakeOpenAI
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SERVICES = {"router", "executor", "memory", "recovery"}
STEPS_CALLED = {"wobbly", "chat", "join"}  # the executor's calls (remember is memory's)
NEEDS = {"remember": [], "wobbly": ["remember"], "chat": ["remember"], "join": ["wobbly", "chat"]}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {
        "PODIUM_TRACING": "local",
        "PODIUM_LLM_MODEL": "gpt-4o-mini",  # priced: the chat's usage costs something
        "PODIUM_LLM_API_KEY": "sk-test",
    }
    with FakeOpenAI() as llm:
        env["PODIUM_LLM_BASE_URL"] = llm.base_url
        with api_stack(kafka_bootstrap, tmp_path_factory, "podium-api-run", env=env) as s:
            yield s


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(stack) as client:
        yield client


async def get(api: httpx.AsyncClient, path: str, headers: dict[str, str]) -> dict[str, Any]:
    r = await api.get(path, headers=headers)
    return r.json() if r.status_code == 200 else {}


def router_entries(stack: Stack, task_id: str) -> list[tuple[Any, ...]]:
    """The router's own history of the task (read here only to compare: the api may
    not read it, and does not)."""
    engine = connect(stack.settings.database_url("router"))
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(router_history)
                .where(router_history.c.task_id == task_id)
                .order_by(router_history.c.id)
            ).all()
    finally:
        engine.dispose()
    return [(r.event, r.step_id, r.cause, r.next) for r in rows]


def story(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(e["kind"], e["step"], e["cause"], e["next_action"]) for e in entries]


async def complete_a_run(stack: Stack, api: httpx.AsyncClient) -> tuple[str, str]:
    """Submit an ``api-run`` task as a new tenant and wait for it: (task id, tenant)."""
    tenant = f"a-{uuid.uuid4().hex[:6]}"
    mine = make_token(stack, "submitter", tenant)
    task_id = f"run-{uuid.uuid4().hex[:8]}"
    body = {"task_id": task_id, "workflow": "api-run", "input": {"text": "remember the run"}}
    r = await api.post("/v1/tasks", json=body, headers=mine)
    assert r.status_code == 202, r.text
    await wait_status(api, task_id, mine, "completed")
    return task_id, tenant


async def test_one_run_complete_its_dag_usage_history_and_trace(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    task_id, tenant = await complete_a_run(stack, api)
    mine = make_token(stack, "viewer", tenant)
    run = await get(api, f"/v1/runs/{task_id}", mine)
    assert run["input"] == {"text": "remember the run"}
    assert run["output"]["chat"] == "echo: remember the run"
    assert run["error"] is None
    steps = {s["step_id"]: s for s in run["steps"]}
    assert {k: s["depends_on"] for k, s in steps.items()} == NEEDS
    assert {s["status"] for s in steps.values()} == {"completed"}
    assert steps["wobbly"]["attempts"] == 2
    usage = run["usage"]
    assert set(usage) == {"tokens_in", "tokens_out", "cost_usd"}
    assert (usage["tokens_in"], usage["tokens_out"]) == (3, 2) and usage["cost_usd"] > 0
    assert steps["chat"]["usage"] == usage

    # The history: as the router wrote it, in order, entry for entry.
    h = await get(api, f"/v1/runs/{task_id}/history", mine)
    entries = h["entries"]
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    assert story(entries) == router_entries(stack, task_id)
    kinds = [e["kind"] for e in entries]
    assert kinds[0] == "accepted" and kinds[-1] == "completed"
    assert kinds.count("step_dispatched") == 4 and kinds.count("step_completed") == 4
    retry = next(e for e in entries if e["kind"] == "retry_scheduled")
    assert retry["step"] == "wobbly" and retry["cause"].startswith("attempt 1 failed")
    assert retry["next_action"].startswith("attempt 2 on pool default")
    assert retry["detail"]["attempt"] == 2
    assert all(
        e["next_action"].startswith("waiting for")
        for e in entries
        if e["kind"] == "step_dispatched"
    )
    ats = [e["at"] for e in entries]
    assert ats == sorted(ats)

    # The trace: one trace, spans of every service, every parent in it but the root's.
    async def whole() -> bool:
        t = await get(api, f"/v1/runs/{task_id}/trace", mine)
        spans = t.get("spans", [])
        known = {s["span_id"] for s in spans}
        closed = sum(1 for s in spans if s["parent_id"] not in known) == 1
        calls = {
            s["attributes"].get("podium.step_id")
            for s in spans
            if s["service"] == "executor" and s["name"] == "executor.call"
        }
        # Each process writes its spans in batches of its own: wait for all of them.
        return {s["service"] for s in spans} >= SERVICES and closed and calls >= STEPS_CALLED

    await wait_until(whole, 30, "the run's spans from every service")
    trace = await get(api, f"/v1/runs/{task_id}/trace", mine)
    assert trace["source"] == "local" and len(trace["trace_ids"]) == 1
    assert {s["trace_id"] for s in trace["spans"]} == set(trace["trace_ids"])
    calls = {
        s["attributes"].get("podium.step_id")
        for s in trace["spans"]
        if s["service"] == "executor" and s["name"] == "executor.call"
    }
    assert calls >= STEPS_CALLED
    assert all(s["duration_ms"] >= 0 and s["end"] >= s["start"] for s in trace["spans"])

    # Another tenant: nothing of it, as if it did not exist.
    theirs = make_token(stack, "operator", f"b-{uuid.uuid4().hex[:6]}")
    for path in (f"/v1/runs/{task_id}", f"/v1/runs/{task_id}/history", f"/v1/runs/{task_id}/trace"):
        r = await api.get(path, headers=theirs)
        assert r.status_code == 404, (path, r.text)


async def test_the_history_is_the_same_after_a_rebuild_from_the_topics(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """A run of its own, complete; then the api's database deleted, the api restarted."""
    task_id, tenant = await complete_a_run(stack, api)
    h = make_token(stack, "viewer", tenant)
    before = (await get(api, f"/v1/runs/{task_id}/history", h))["entries"]
    assert story(before) == router_entries(stack, task_id)
    await restart_api_on_a_new_database(stack, api)
    h = make_token(stack, "viewer", tenant)  # the old tokens went with the database

    async def rebuilt() -> bool:
        entries = (await get(api, f"/v1/runs/{task_id}/history", h)).get("entries", [])
        return bool(entries) and entries[-1]["kind"] == "completed"

    await wait_until(rebuilt, 90, "the history rebuilt from the topics")
    entries = (await get(api, f"/v1/runs/{task_id}/history", h))["entries"]
    assert repr(entries) == repr(before)
    run = await get(api, f"/v1/runs/{task_id}", h)
    assert {s["step_id"]: s["depends_on"] for s in run["steps"]} == NEEDS
