"""The caps on what one task may make podium do, over the real broker and the
real service processes: step dispatches per task, fan-out width, attempts per
step and retries per task. Each cap triggers with an error naming it and its
value, and nothing is lost: every submitted task reaches exactly one terminal
outcome on the task events topic, and its history says why.

The stack runs with small caps and its own workflows (tests/workflows/limits),
so a cap is reached in a few attempts rather than a thousand."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import (
    TaskCancelled,
    TaskCompleted,
    TaskFailed,
    TaskRejected,
    TaskSubmitted,
    decode,
)
from podium_shared import Topics, dlq_headers
from tests.conftest import stack_settings
from tests.support.kafka import read_to_end
from tests.support.router_db import task_history

pytestmark = pytest.mark.integration

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows" / "limits"
CAPS = {
    "PODIUM_ROUTER_MAX_STEP_DISPATCHES": "5",
    "PODIUM_ROUTER_MAX_FANOUT": "3",
    "PODIUM_RECOVERY_MAX_ATTEMPTS_CAP": "3",
    "PODIUM_RECOVERY_MAX_TASK_RETRIES": "2",
    "PODIUM_BREAKER_FAILURES": "1000",  # the drills fail on purpose
}
TERMINAL = (TaskCompleted, TaskFailed, TaskCancelled, TaskRejected)


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("podium-limits")
    settings = stack_settings(kafka_bootstrap, home).model_copy(
        update={"workflows": str(WORKFLOWS)}
    )
    with Stack(settings, env=CAPS) as s:
        yield s


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def run_one(stack: Stack, task: TaskSubmitted) -> TaskCompleted | TaskFailed:
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 60))[task.task_id]
    assert isinstance(outcome, TaskCompleted | TaskFailed), outcome
    return outcome


async def terminal_outcomes(stack: Stack, task_ids: set[str]) -> Counter[str]:
    """How many terminal events each of ``task_ids`` has on the task events topic."""
    topic = Topics(stack.settings.topic_prefix).task_events
    counts: Counter[str] = Counter()
    for record in await read_to_end(stack.bootstrap, topic):
        event = decode(record.value, list(record.headers)).payload
        if isinstance(event, TERMINAL) and event.task_id in task_ids:
            counts[event.task_id] += 1
    return counts


def events(stack: Stack, task_id: str) -> list[tuple[str, str | None]]:
    return [(e["event"], e["step_id"]) for e in task_history(stack.settings, task_id)["history"]]


async def test_a_dispatch_past_the_cap_fails_the_task_before_anything_is_sent(
    stack: Stack,
) -> None:
    task = TaskSubmitted(task_id=tid("dispatches"), workflow="limits-dispatches")
    outcome = await run_one(stack, task)
    assert isinstance(outcome, TaskFailed), outcome
    assert outcome.error.type == "limit_exceeded"
    assert outcome.error.step_id == "d"
    assert outcome.error.message == (
        "6 step dispatches would exceed PODIUM_ROUTER_MAX_STEP_DISPATCHES (5) for one task;"
        " 5 sent so far"
    )
    history = events(stack, task.task_id)
    # a three times (two retries), b, c: five; d was never sent
    assert history.count(("retry_scheduled", "a")) == 2
    dispatched = [s for e, s in history if e == "step_dispatched"]
    assert dispatched == ["a", "b", "c"]
    assert history[-1] == ("failed", "d")
    info = task_history(stack.settings, task.task_id)
    assert info["history"][-1]["cause"].startswith("limit_exceeded: 6 step dispatches")
    assert await terminal_outcomes(stack, {task.task_id}) == {task.task_id: 1}


async def test_steps_at_the_fanout_cap_run_together_and_complete(stack: Stack) -> None:
    task = TaskSubmitted(task_id=tid("fanout"), workflow="limits-fanout")
    outcome = await run_one(stack, task)
    assert isinstance(outcome, TaskCompleted), outcome
    history = task_history(stack.settings, task.task_id)["history"]
    sent = {e["step_id"]: e["at"] for e in history if e["event"] == "step_dispatched"}
    assert set(sent) == {"start", "x", "y", "z", "join"}  # five of five dispatches
    assert sent["x"] == sent["y"] == sent["z"]  # one transaction: all three at once
    assert await terminal_outcomes(stack, {task.task_id}) == {task.task_id: 1}


async def test_a_step_past_the_attempts_cap_is_dead_lettered_naming_it(stack: Stack) -> None:
    task = TaskSubmitted(task_id=tid("attempts"), workflow="limits-attempts")
    outcome = await run_one(stack, task)
    assert isinstance(outcome, TaskFailed), outcome
    assert outcome.error.step_id == "stubborn" and outcome.error.type == "unavailable"
    assert outcome.error.message.endswith(
        "(3 attempt(s) failed; its policy allows 8, PODIUM_RECOVERY_MAX_ATTEMPTS_CAP is 3)"
    ), outcome.error.message
    history = events(stack, task.task_id)
    assert history.count(("retry_scheduled", "stubborn")) == 2
    assert ("step_abandoned", "stubborn") in history and history[-1] == ("failed", "stubborn")

    assert outcome.dlq is not None
    records = await read_to_end(stack.bootstrap, outcome.dlq.topic)
    [record] = [r for r in records if dict(r.headers)["ce_id"].decode() == outcome.dlq.record_id]
    meta = dlq_headers(list(record.headers))
    assert meta["reason"] == "step_abandoned" and meta["abandoned"] == "limit"
    assert meta["attempts"] == "3" and meta["task-id"] == task.task_id
    assert await terminal_outcomes(stack, {task.task_id}) == {task.task_id: 1}


async def test_a_task_past_its_retries_is_dead_lettered_naming_the_cap(stack: Stack) -> None:
    task = TaskSubmitted(task_id=tid("retries"), workflow="limits-task-retries")
    outcome = await run_one(stack, task)
    assert isinstance(outcome, TaskFailed), outcome
    assert outcome.error.step_id == "second"
    assert outcome.error.message.endswith(
        "(1 attempt(s) failed; the task's steps were retried 2 time(s),"
        " PODIUM_RECOVERY_MAX_TASK_RETRIES is 2)"
    ), outcome.error.message
    history = events(stack, task.task_id)
    assert history.count(("retry_scheduled", "first")) == 2
    assert ("retry_scheduled", "second") not in history
    assert history[-1] == ("failed", "second")
    assert outcome.dlq is not None
    assert await terminal_outcomes(stack, {task.task_id}) == {task.task_id: 1}


async def test_every_task_of_a_mixed_batch_ends_exactly_once(stack: Stack) -> None:
    """Caps hit side by side with tasks that fit: none lost, none answered twice."""
    workflows = ["limits-dispatches", "limits-fanout", "limits-attempts", "limits-task-retries"]
    tasks = [TaskSubmitted(task_id=tid(f"mix{i}"), workflow=workflows[i % 4]) for i in range(12)]
    async with PodiumClient(stack.settings) as client:
        for task in tasks:
            await client.submit(task)
        outcomes = await client.wait_for([t.task_id for t in tasks], 90)
    kinds = Counter((t.workflow, type(outcomes[t.task_id]).__name__) for t in tasks)
    assert kinds == {
        ("limits-dispatches", "TaskFailed"): 3,
        ("limits-fanout", "TaskCompleted"): 3,
        ("limits-attempts", "TaskFailed"): 3,
        ("limits-task-retries", "TaskFailed"): 3,
    }
    ids = {t.task_id for t in tasks}
    assert await terminal_outcomes(stack, ids) == dict.fromkeys(ids, 1)
    for task in tasks:
        assert task_history(stack.settings, task.task_id)["history"][0]["event"] == "accepted"


def test_a_workflow_wider_than_the_cap_stops_the_router_naming_the_file(
    stack: Stack, tmp_path: Path
) -> None:
    wide = tmp_path / "wide.yaml"
    wide.write_text(
        "name: wide\nsteps:\n  - {id: s, uses: echo}\n"
        + "".join(f"  - {{id: p{i}, uses: echo, needs: [s]}}\n" for i in range(4))
    )
    env = stack.child_env(None, None, "router")
    env.update(CAPS)
    env["PODIUM_WORKFLOWS"] = str(tmp_path)
    # Refused while loading, before any connection: the subprocess timeout bounds it
    # (a wall-clock assertion would measure the machine's load, not the router).
    result = subprocess.run(
        [sys.executable, "-m", "podium_router"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert output.strip().splitlines()[-1] == (
        f"router: bad workflow definition: {wide}: workflow 'wide': 4 steps can run at once"
        " (p0, p1, p2, p3), more than PODIUM_ROUTER_MAX_FANOUT (3)"
    ), output
    assert "Traceback" not in output, output
