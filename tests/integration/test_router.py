"""The router over the real broker and processes: DAGs, crashes, limits, cancellation."""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import (
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskFailed,
    TaskSubmitted,
)
from podium_shared import Settings, Topics
from tests.conftest import stack_settings
from tests.support.kafka import read_topic
from tests.support.postgres import scratch_databases
from tests.support.router_db import StatusError, task_history, task_status

pytestmark = pytest.mark.integration


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def _steps(stack: Stack, task_id: str) -> list[object]:
    try:
        return list(task_status(stack.settings, task_id)["steps"])
    except StatusError:
        return []


async def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_parallel_dag_completes_with_the_right_data_flow(stack: Stack) -> None:
    task = TaskSubmitted(task_id=tid("dag"), workflow="fan-out", input={"seconds": 0.3, "k": 1})
    async with PodiumClient(stack.settings) as client:
        started = time.monotonic()
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 30))[task.task_id]
        elapsed = time.monotonic() - started
    assert isinstance(outcome, TaskCompleted), outcome
    assert outcome.output == {"left": "left", "right": "right"}
    assert elapsed < 0.6 + 1.0, "the two 0.3 s sleeps ran one after the other"
    steps = {s["step_id"]: s for s in task_status(stack.settings, task.task_id)["steps"]}
    assert set(steps) == {"start", "left", "right", "join"}
    events = task_history(stack.settings, task.task_id)["history"]
    dispatched = [e for e in events if e["event"] == "step_dispatched"]
    at = {e["step_id"]: e["at"] for e in dispatched}
    assert at["left"] == at["right"]  # fanned out in one transaction
    assert [e["event"] for e in events][-1] == "completed"


async def test_a_deadline_fails_the_task_with_its_reason(stack: Stack) -> None:
    task = TaskSubmitted(
        task_id=tid("late"),
        workflow="test-slow",
        input={"seconds": 5},
        deadline=datetime.now(UTC) + timedelta(seconds=1.5),
    )
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        outcome = (await client.wait_for([task.task_id], 20))[task.task_id]
    assert isinstance(outcome, TaskFailed)
    assert outcome.error.type == "deadline_exceeded", outcome.error
    assert "deadline" in outcome.error.message


async def test_cancel_ends_the_task_as_cancelled(stack: Stack) -> None:
    task = TaskSubmitted(task_id=tid("cancel"), workflow="test-slow", input={"seconds": 3})
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        await wait_until(lambda: _steps(stack, task.task_id) != [], 10)
        await client.publish(
            TaskCancelRequested(task_id=task.task_id, reason="not needed"), key=task.task_id
        )
        outcome = (await client.wait_for([task.task_id], 20))[task.task_id]
        assert isinstance(outcome, TaskCancelled) and outcome.reason == "not needed"
        # The sleep step finishes after the cancel; its late result must change nothing.
        await wait_until(
            lambda: (
                task_history(stack.settings, task.task_id)["history"][-1]["event"]
                == "late_result_ignored"
            ),
            15,
        )
    info = task_history(stack.settings, task.task_id)
    assert info["status"] == "cancelled"
    assert info["history"][-1]["event"] == "late_result_ignored"


def test_a_bad_workflow_file_is_refused_at_start_up(tmp_path: Path, kafka_bootstrap: str) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\nsteps:\n  - id: a\n    usess: echo\n")
    env = {
        **os.environ,
        "PODIUM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PODIUM_HOME": str(tmp_path),
        "PODIUM_WORKFLOWS": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "podium_router"],
        env=env,
        timeout=30,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert str(tmp_path / "broken.yaml") in result.stderr
    assert "line 4" in result.stderr and "steps.0.usess" in result.stderr
    assert "Traceback" not in result.stderr


_LAUGHS = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)
)  # 9**9 strings once expanded


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("name: hostile\nversion: !!int yw\nsteps: [{id: a, uses: echo}]\n", ":2:"),
        ("name: hostile\ndescription: !!timestamp junk\nsteps: [{id: a, uses: echo}]\n", ":2:"),
        ("name: hostile\nsteps: [{id: a, uses: echo}]\noutput: " + "[" * 3000 + "]" * 3000, ":3:"),
        ("name: hostile\nsteps: [{id: a, uses: echo}]\nl0: &l0 [lol]\n" + _LAUGHS, "nodes"),
    ],
    ids=["bad-int", "bad-timestamp", "3000-deep", "billion-laughs"],
)
def test_hostile_yaml_is_a_bad_workflow_definition_not_a_crash(
    tmp_path: Path, kafka_bootstrap: str, body: str, line: str
) -> None:
    (tmp_path / "hostile.yaml").write_text(body)
    env = {
        **os.environ,
        "PODIUM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PODIUM_HOME": str(tmp_path),
        "PODIUM_WORKFLOWS": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "podium_router"],
        env=env,
        timeout=180,  # wall time is at the mercy of the machine's load; CPU time is not
        capture_output=True,
        text=True,
        check=False,
        # Refused, not ground through: start-up takes ~2 s of CPU, the alias bomb took 40 s
        # before a MemoryError. Past 20 s the kernel stops the router (SIGXCPU).
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (20, 20)),
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "router: bad workflow definition:" in result.stderr
    assert f"{tmp_path / 'hostile.yaml'}" in result.stderr and line in result.stderr
    assert "Traceback" not in result.stderr


def _peak_rss_mb(pid: int) -> float:
    """The process's high-water mark of resident memory (Linux's VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:"))) / 1024


async def test_hostile_input_cannot_make_the_router_build_a_huge_value(stack: Stack) -> None:
    router = next(p for p in stack.processes if p.name == "router")
    one = {"a": 1, "b": 1, "c": 1, "d": 1}
    printf = TaskSubmitted(
        task_id=tid("printf"), workflow="router-sandbox", input={**one, "c": "%0300000000d"}
    )
    # One list holding a thousand zeros, a thousand times over: 1 item at the top level,
    # a million zeros (2 MB of JSON) in the step's message.
    nested = TaskSubmitted(
        task_id=tid("nested"),
        workflow="router-sandbox",
        input={**one, "a": [[0] * 1000], "b": 1000},
    )
    fine = TaskSubmitted(
        task_id=tid("fine"), workflow="router-sandbox", input={"a": "ab", "b": 3, "c": 10, "d": 3}
    )
    before = _peak_rss_mb(router.proc.pid)
    async with PodiumClient(stack.settings) as client:
        for task in (printf, nested, fine):
            await client.submit(task)
        outcomes = await client.wait_for([printf.task_id, nested.task_id, fine.task_id], 60)
    grew = _peak_rss_mb(router.proc.pid) - before

    failed = outcomes[printf.task_id]
    assert isinstance(failed, TaskFailed), failed
    assert failed.error.type == "template_error" and "printf formatting" in failed.error.message
    failed = outcomes[nested.task_id]
    assert isinstance(failed, TaskFailed), failed
    assert failed.error.type == "too_large"  # refused before it was built
    assert "result larger than 1000000 bytes" in failed.error.message
    assert failed.error.step_id == "build"
    done = outcomes[fine.task_id]
    assert isinstance(done, TaskCompleted), done
    assert done.output == {"product": "ababab", "remainder": 1}
    # "%0300000000d" % 1 built a 300 MB string before the bound was checked.
    assert grew < 100, f"the router's peak memory grew by {grew:.0f} MB"
    assert router.proc.poll() is None


def test_an_expression_that_cannot_work_is_refused_at_start_up(
    tmp_path: Path, kafka_bootstrap: str
) -> None:
    bad = ["b'x'", "1j", "...", "{1: 2}", "{**input}", "'%0300000000d' % input.n"]
    steps = "".join(
        f'  - id: s{i}\n    uses: echo\n    with: {{v: "{{{{ {source} }}}}"}}\n'
        for i, source in enumerate(bad)
    )
    (tmp_path / "cannot.yaml").write_text(f"name: cannot\nsteps:\n{steps}")
    env = {
        **os.environ,
        "PODIUM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PODIUM_HOME": str(tmp_path),
        "PODIUM_WORKFLOWS": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "podium_router"],
        env=env,
        timeout=180,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "router: bad workflow definition:" in result.stderr
    for i in range(len(bad)):
        assert f"steps.{i}.with" in result.stderr, (i, result.stderr)
    assert "literals are strings, numbers, true, false and null" in result.stderr
    assert "object keys must be strings" in result.stderr
    assert "printf formatting" in result.stderr
    assert "Traceback" not in result.stderr


async def test_router_killed_mid_batch_resumes_and_every_task_completes_exactly_once(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    with Stack(stack_settings(kafka_bootstrap, tmp_path)) as stack:
        topics = Topics(stack.settings.topic_prefix)
        tasks = [
            TaskSubmitted(
                task_id=tid(f"crash{i}"), workflow="fan-out", input={"seconds": 0.2, "i": i}
            )
            for i in range(20)
        ]
        async with PodiumClient(stack.settings) as client:
            for t in tasks:
                await client.submit(t)
            # kill while most of the batch is in flight
            await wait_until(lambda: len(client.outcomes) >= 3, 30)
            router = next(p for p in stack.processes if p.name == "router")
            stack.kill(router)
            stack.processes.remove(router)
            in_flight = 20 - len(client.outcomes)
            stack.spawn("router")
            stack.wait_ready(60)
            outcomes = await client.wait_for([t.task_id for t in tasks], 60)
        assert in_flight > 0
        assert all(isinstance(o, TaskCompleted) for o in outcomes.values()), outcomes
        for t in tasks:
            assert outcomes[t.task_id].output == {"left": "left", "right": "right"}

        # exactly once: one logical completion per task, no step dispatched twice
        events = await read_topic(stack.bootstrap, topics.task_events, at_least=40)
        completions: dict[str, set[str]] = defaultdict(set)
        for r in events:
            h = dict(r.headers)
            if h["ce_type"] == b"podium.task.completed.v1":
                completions[r.key.decode()].add(h["ce_id"].decode())
        assert {t.task_id: len(completions[t.task_id]) for t in tasks} == {
            t.task_id: 1 for t in tasks
        }
        requests = await read_topic(stack.bootstrap, topics.steps("default"), at_least=80)
        dispatches: dict[str, set[str]] = defaultdict(set)
        for r in requests:
            dispatches[r.key.decode()].add(dict(r.headers)["ce_id"].decode())
        mine = {k: v for k, v in dispatches.items() if k.split("/")[0].startswith("crash")}
        assert len(mine) == 80 and all(len(ids) == 1 for ids in mine.values())
        for t in tasks:
            body = orjson.dumps(task_status(stack.settings, t.task_id)["steps"])
            assert body.count(b'"attempts":1') == 4


async def test_two_router_replicas_share_the_work_on_postgresql(
    kafka_bootstrap: str, tmp_path: Path, postgres_url: str
) -> None:
    # A database of its own: the session's is the unit tests', and other services'
    # migrations must not find the router's revisions there.
    with scratch_databases(postgres_url, ("router",)) as urls:
        await _two_routers_share_the_work(
            stack_settings(kafka_bootstrap, tmp_path, router_database_url=urls["router"])
        )


async def _two_routers_share_the_work(settings: Settings) -> None:
    with Stack(settings) as stack:
        second = stack.spawn("router")
        stack.wait_ready(60)
        tasks = [
            TaskSubmitted(task_id=tid(f"pg{i}"), workflow="chain3", input={"i": i})
            for i in range(40)
        ]
        async with PodiumClient(stack.settings) as client:
            for t in tasks:
                await client.submit(t)
            outcomes = await client.wait_for([t.task_id for t in tasks], 60)
        assert all(isinstance(o, TaskCompleted) for o in outcomes.values())
        assert outcomes[tasks[7].task_id].output == {"from_two": {"from_one": {"i": 7}}}
        # both replicas did part of the work
        logs = [p.log_path.read_text() for p in stack.processes if p.name == "router"]
        assert second.log_path.name == "router-1.log"
        assert all('"partitions assigned"' in log for log in logs)
        assigned = [log.rsplit('"partitions assigned"', 1)[0].rsplit("{", 1)[1] for log in logs]
        assert all("tasks.v1" in a for a in assigned), assigned
        # Their relays claim the outbox rows they send: each step request went out once
        # (plain relays on one database each sent every row they saw).
        topic = Topics(stack.settings.topic_prefix).steps("default")
        requests = await read_topic(stack.bootstrap, topic, at_least=10**6, timeout_s=3)
        sent = Counter(
            dict(r.headers)["ce_id"] for r in requests if r.key.decode().startswith("pg")
        )
        assert len(sent) == 3 * len(tasks) and set(sent.values()) == {1}, sent.most_common(3)


async def test_a_budget_overrun_fails_the_task_with_its_reason(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from tests.support.fake_openai import FakeOpenAI

    with FakeOpenAI() as llm:
        env = {
            "PODIUM_LLM_BASE_URL": llm.base_url,
            "PODIUM_LLM_MODEL": "gpt-4o-mini",
            "PODIUM_LLM_API_KEY": "sk-test",
        }
        with Stack(stack_settings(kafka_bootstrap, tmp_path), env=env) as stack:
            words = "one two three four five six seven eight nine ten"
            # the fake reports one prompt token per word and two completion tokens
            within = TaskSubmitted(
                task_id=tid("budget-ok"),
                workflow="test-budget",
                input={"text": words},
                budget={"max_tokens": 100},
            )
            over = TaskSubmitted(
                task_id=tid("budget-over"),
                workflow="test-budget",
                input={"text": words},
                budget={"max_tokens": 5},
            )
            async with PodiumClient(stack.settings) as client:
                await client.submit(within)
                await client.submit(over)
                outcomes = await client.wait_for([within.task_id, over.task_id], 30)
            assert isinstance(outcomes[within.task_id], TaskCompleted)
            # the second prompt is "echo: " and the ten words
            assert outcomes[within.task_id].usage.prompt_tokens == 10 + 11
            failed = outcomes[over.task_id]
            assert isinstance(failed, TaskFailed), failed
            assert failed.error.type == "budget_exceeded" and failed.error.step_id == "first"
            assert "12 tokens exceed the budget of 5" in failed.error.message
            steps = task_status(stack.settings, over.task_id)["steps"]
            assert [s["step_id"] for s in steps] == ["first"]  # nothing more was dispatched
        assert sum(1 for r in llm.requests if r["messages"][-1]["content"] == words) == 2
