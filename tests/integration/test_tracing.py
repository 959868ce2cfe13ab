"""Tracing and metrics over the real broker and processes: one task is one
trace across router, memory, executor and recovery, under the upstream
producer's span; `podium trace` draws it from the api; /metrics reports lag and latency."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskSubmitted, encode
from podium_shared import Topics
from podium_shared.spans import load_spans, trace_ids_of
from tests.conftest import stack_settings
from tests.support.api_runs import until_api_sees

pytestmark = pytest.mark.integration

UPSTREAM_TRACE = uuid.uuid4().hex
UPSTREAM_SPAN = uuid.uuid4().hex[:16]
UPSTREAM = f"00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"
SERVICES = {"router", "executor", "memory", "recovery"}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("podium-tracing")
    # The api too: `podium trace` asks it, as `podium up` runs it (it reads the span files).
    settings = stack_settings(kafka_bootstrap, home)
    with Stack(settings, env={"PODIUM_TRACING": "local"}, api=True) as s:
        s.operator_token()
        yield s


@pytest.fixture(scope="module")
def traced_task(stack: Stack) -> dict[str, Any]:
    """One three-step task with a retried step, submitted under an upstream span."""
    task = TaskSubmitted(
        task_id=f"traced-{uuid.uuid4().hex[:8]}",
        workflow="tracing-three",
        input={"text": "tracing remembers this"},
    )
    value, headers = encode(task, source="upstream", traceparent=UPSTREAM)

    async def run() -> Any:
        async with PodiumClient(stack.settings) as client:
            await client.submit_raw(value, headers, key=task.task_id.encode())
            return (await client.wait_for([task.task_id], 60))[task.task_id]

    outcome = asyncio.run(run())
    assert isinstance(outcome, TaskCompleted), outcome
    asyncio.run(until_api_sees(stack, [task.task_id]))
    # Spans reach the files within the exporters' 200 ms batching delay.
    deadline = time.monotonic() + 20
    while True:
        spans = [s for s in load_spans(stack.settings.home) if s["trace_id"] == UPSTREAM_TRACE]
        services = {s["service"] for s in spans}
        steps = {
            s["attributes"].get("podium.step_id") for s in spans if s["name"] == "executor.call"
        }
        # Each service flushes its own file: a consume span can land before the span of
        # the publish it descends from. Wait until every parent is in (or upstream).
        known = {s["span_id"] for s in spans} | {UPSTREAM_SPAN}
        closed = all(s["parent_span_id"] in known for s in spans)
        complete = services >= SERVICES and {"wobbly", "echo"} <= steps and closed
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {"task_id": task.task_id, "spans": spans, "outcome": outcome}


def _by_id(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["span_id"]: s for s in spans}


def _ancestors(span: dict[str, Any], index: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    while span.get("parent_span_id") in index:
        span = index[span["parent_span_id"]]
        out.append(span)
    return out


def test_one_task_is_one_trace_under_the_upstream_span(
    stack: Stack, traced_task: dict[str, Any]
) -> None:
    spans = traced_task["spans"]
    assert {s["service"] for s in spans} >= SERVICES, {s["service"] for s in spans}
    assert trace_ids_of(load_spans(stack.settings.home), traced_task["task_id"]) == [UPSTREAM_TRACE]
    index = _by_id(spans)
    roots = [s for s in spans if s["parent_span_id"] not in index]
    # The only spans without a parent in the trace are the consumes of the submission,
    # each under the upstream producer's span: the router's, and the api's (its
    # projection reads the tasks topic too; its span may not be written yet).
    tasks_topic = Topics(stack.settings.topic_prefix).tasks
    consume = f"process {tasks_topic}"
    assert sorted((r["service"], r["name"], r["parent_span_id"]) for r in roots) in (
        [("router", consume, UPSTREAM_SPAN)],
        [("api", consume, UPSTREAM_SPAN), ("router", consume, UPSTREAM_SPAN)],
    )
    assert all(r["remote_parent"] is True for r in roots)


def test_parent_links_cross_the_outbox_and_the_retry(
    stack: Stack, traced_task: dict[str, Any]
) -> None:
    spans, index = traced_task["spans"], _by_id(traced_task["spans"])
    topics = Topics(stack.settings.topic_prefix)

    def chain(span: dict[str, Any]) -> list[tuple[str, str]]:
        return [(a["service"], a["name"]) for a in _ancestors(span, index)]

    # memory: its operation ← its consume ← the relay's publish ← the routing decision
    remember = next(s for s in spans if s["name"] == "memory.remember")
    assert chain(remember)[:4] == [
        ("memory", f"process {topics.steps('memory')}"),
        ("router", f"publish {topics.steps('memory')}"),
        ("router", "router.route"),
        ("router", f"process {topics.tasks}"),
    ]
    route = _ancestors(remember, index)[2]
    assert route["attributes"]["podium.step_id"] == "remember"
    assert route["attributes"]["podium.route.pool"] == "memory"

    calls = sorted(
        (
            s
            for s in spans
            if s["name"] == "executor.call" and s["attributes"]["podium.step_id"] == "wobbly"
        ),
        key=lambda s: s["attributes"]["podium.attempt"],
    )
    assert [c["attributes"]["podium.attempt"] for c in calls] == [1, 2]
    assert calls[0]["status"] == "ERROR" and calls[1]["status"] != "ERROR"
    assert (
        calls[0]["attributes"]["podium.idempotency_key"]
        == (calls[1]["attributes"]["podium.idempotency_key"])
    )
    # The retry: attempt 2 descends from recovery's consume of attempt 1's failure,
    # which descends from attempt 1's call.
    second = chain(calls[1])
    assert ("recovery", f"process {topics.step_failures}") in second, second
    # ... through the retry-scheduling span, whose context the durable timer kept
    assert ("recovery", "recovery.retry_scheduled") in second, second
    failure = next(
        a
        for a in _ancestors(calls[1], index)
        if a["service"] == "recovery" and a["name"] == f"process {topics.step_failures}"
    )
    first_process = index[calls[0]["parent_span_id"]]
    assert first_process["name"] == f"process {topics.steps('default')}"
    assert first_process["span_id"] in {a["span_id"] for a in _ancestors(failure, index)}

    echo = next(
        s
        for s in spans
        if s["name"] == "executor.call" and s["attributes"]["podium.step_id"] == "echo"
    )
    assert [n for _, n in chain(echo)[:3]] == [
        f"process {topics.steps('default')}",
        f"publish {topics.steps('default')}",
        "router.route",
    ]
    assert echo["attributes"]["podium.capability"] == "echo"


def podium(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PODIUM_HOME": str(stack.settings.home), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "podium", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_podium_trace_shows_every_service(stack: Stack, traced_task: dict[str, Any]) -> None:
    run = podium(stack, "trace", traced_task["task_id"], "--json")
    assert run.returncode == 0, run.stderr
    data = orjson.loads(run.stdout)
    (trace,) = data["traces"]
    assert trace["trace_id"] == UPSTREAM_TRACE
    assert set(trace["services"]) >= SERVICES
    assert trace["upstream_parent"] == UPSTREAM_SPAN
    assert trace["spans"][0]["depth"] == 0 and trace["duration_ms"] > 0
    text = podium(stack, "trace", traced_task["task_id"])
    assert text.returncode == 0, text.stderr
    for service in SERVICES:
        assert service in text.stdout
    assert "█" in text.stdout and "router.route" in text.stdout
    missing = podium(stack, "trace", "no-such-task")
    assert (missing.returncode, missing.stderr) == (
        1,
        "podium: error: no such task 'no-such-task'\n",
    )


def scrape(url: str) -> str:
    return urllib.request.urlopen(url, timeout=5).read().decode()


def test_metrics_report_lag_and_step_latency_after_a_batch(stack: Stack) -> None:
    batch = [
        TaskSubmitted(task_id=f"m-{uuid.uuid4().hex[:8]}", workflow="hello", input={"text": "x"})
        for _ in range(30)
    ]

    async def run() -> None:
        async with PodiumClient(stack.settings) as client:
            await asyncio.gather(*(client.submit(t) for t in batch))
            outcomes = await client.wait_for([t.task_id for t in batch], 60)
        assert all(isinstance(o, TaskCompleted) for o in outcomes.values())

    asyncio.run(run())
    executor = next(p for p in stack.processes if p.name == "executor")
    router = next(p for p in stack.processes if p.name == "router")
    assert executor.metrics_url and router.metrics_url
    group = Topics(stack.settings.topic_prefix).group("executor", "default")
    steps = Topics(stack.settings.topic_prefix).steps("default")
    deadline = time.monotonic() + 10
    while True:
        body = scrape(executor.metrics_url)
        lag = [
            line
            for line in body.splitlines()
            if line.startswith("podium_consumer_lag{") and f'group="{group}"' in line
        ]
        if lag or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert lag and all(f'topic="{steps}"' in line for line in lag), body[-2000:]
    count = next(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("podium_step_duration_seconds_count{")
        and 'capability="echo"' in line
        and 'pool="default"' in line
        and 'outcome="completed"' in line
    )
    assert count >= len(batch)
    assert 'podium_step_duration_seconds_bucket{capability="echo"' in body
    tasks_topic = Topics(stack.settings.topic_prefix).tasks
    assert f'podium_messages_total{{service="router",topic="{tasks_topic}"}}' in scrape(
        router.metrics_url
    )


def test_spans_are_kept_under_podium_home(stack: Stack) -> None:
    files = list(Path(stack.settings.home, "spans").glob("*.jsonl"))
    assert {f.name.split("-")[0] for f in files} >= SERVICES
