"""Executor pools over the real broker with real processes: replicas sharing a
pool, kill -9 mid-batch, timeouts, an open circuit and llm.chat against a local
OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from podium.client import PodiumClient
from podium.stack import ServiceProcess, Stack
from podium_contracts import (
    StepCompleted,
    StepFailed,
    StepRequested,
    TaskCompleted,
    TaskSubmitted,
    decode,
    encode,
)
from podium_shared import Topics
from podium_shared.kafka import ensure_topics, make_producer
from tests.conftest import stack_settings
from tests.support.fake_openai import FakeOpenAI
from tests.support.kafka import committed_offsets, read_topic
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def pools(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, llm_server: FakeOpenAI
) -> Iterator[Stack]:
    """Three replicas of pool "work" and one of pool "solo" (breaker state is per replica)."""
    env = {
        "PODIUM_CONCURRENCY": "8",
        "PODIUM_BREAKER_FAILURES": "2",
        "PODIUM_BREAKER_COOLDOWN_S": "120",
        "PODIUM_SHUTDOWN_GRACE_S": "2",
        "PODIUM_LLM_BASE_URL": llm_server.base_url,
        "PODIUM_LLM_MODEL": "gpt-4o-mini",
        "PODIUM_LLM_API_KEY": "sk-test",
    }
    home = tmp_path_factory.mktemp("podium-executor")
    with Stack(stack_settings(kafka_bootstrap, home), executors=3, pools=("work",), env=env) as s:
        s.spawn("executor", pool="solo")
        s.wait_ready(60)
        yield s


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def replicas(stack: Stack, pool: str) -> list[ServiceProcess]:
    return [p for p in stack.processes if p.name == "executor" and stack.pool_of(p) == pool]


def keys_in(path: Path) -> collections.Counter[str]:
    lines = path.read_bytes().splitlines() if path.exists() else []
    return collections.Counter(orjson.loads(line)["key"] for line in lines if line.strip())


def last_assignment(log: Path) -> list[str]:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if '"partitions assigned"' in line:
            return list(orjson.loads(line)["partitions"])
    return []


async def end_offsets(bootstrap: str, topic: str, at_least: int) -> dict[int, int]:
    """One past the last offset of each partition that has records."""
    ends: dict[int, int] = {}
    for r in await read_topic(bootstrap, topic, at_least=at_least):
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    return ends


async def first_failure(stack: Stack, task_id: str, timeout_s: float = 30) -> StepFailed:
    topic = Topics(stack.settings.topic_prefix).step_failures
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = await read_topic(stack.bootstrap, topic, at_least=1, timeout_s=5)
        failures = [decode(r.value, list(r.headers)).payload for r in records]
        mine = [f for f in failures if isinstance(f, StepFailed) and f.task_id == task_id]
        if mine:
            return min(mine, key=lambda f: f.attempt)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no StepFailed for {task_id}")


async def run_effects(
    stack: Stack, path: Path, n: int, hold_s: float, during: object = None
) -> dict[str, TaskCompleted]:
    tasks = [
        TaskSubmitted(
            task_id=tid("fx"),
            workflow="executor-effect",
            input={"path": str(path), "value": i, "hold_s": hold_s},
        )
        for i in range(n)
    ]
    async with PodiumClient(stack.settings) as client:
        await asyncio.gather(*(client.submit(t) for t in tasks))
        waiting = asyncio.create_task(client.wait_for([t.task_id for t in tasks], 120))
        if callable(during):
            await during()
        outcomes = await waiting
    done = {k: v for k, v in outcomes.items() if isinstance(v, TaskCompleted)}
    assert len(done) == n, [v for v in outcomes.values() if not isinstance(v, TaskCompleted)][:3]
    return done


async def test_three_replicas_share_the_pool_and_finish_a_batch(
    pools: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "effects.jsonl"
    done = await run_effects(pools, path, 48, hold_s=0.05)
    counts = keys_in(path)
    assert len(counts) == 48 and set(counts.values()) == {1}
    assert {f"{t}/record" for t in done} == set(counts)
    work = replicas(pools, "work")
    assert len(work) == 3
    shares = [last_assignment(p.log_path) for p in work]
    assert all(shares), shares  # every replica holds partitions
    assert sorted(p for s in shares for p in s) == sorted({p for s in shares for p in s})
    # Every consumed step's offset is committed: nothing would be redelivered.
    topic = Topics(pools.settings.topic_prefix).steps("work")
    group = Topics(pools.settings.topic_prefix).group("executor", "work")
    ends = await end_offsets(pools.bootstrap, topic, at_least=48)
    assert sum(ends.values()) == 48
    deadline = time.monotonic() + 15

    def committed_of(offsets: dict[int, int]) -> dict[int, int]:
        return {p: o for p, o in offsets.items() if p in ends}

    while committed_of(await committed_offsets(pools.bootstrap, group, topic)) != ends:
        assert time.monotonic() < deadline, ends
        await asyncio.sleep(0.5)


async def test_kill_9_mid_batch_loses_nothing_and_doubles_no_effect(
    pools: Stack, tmp_path: Path
) -> None:
    path = tmp_path / "effects.jsonl"
    work = {p.proc.pid: p for p in replicas(pools, "work")}
    killed: list[ServiceProcess] = []

    async def kill_one_mid_step() -> None:
        # Wait until effects happen on the replicas, then kill the replica that appended
        # the newest line: that step holds for 0.8 s after its append, so it is in flight.
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "no effects from the work pool"
            lines = path.read_bytes().splitlines() if path.exists() else []
            pids = [orjson.loads(line)["pid"] for line in lines if line.strip()]
            if len(pids) >= 12 and pids[-1] in work:
                killed.append(work[pids[-1]])
                pools.kill(killed[0])  # SIGKILL: no shutdown, in-flight steps die mid-hold
                return
            await asyncio.sleep(0.02)

    done = await run_effects(pools, path, 72, hold_s=0.8, during=kill_one_mid_step)
    assert killed[0].proc.returncode == -9
    counts = keys_in(path)
    assert len(counts) == 72 and set(counts.values()) == {1}, counts.most_common(3)
    # Steps that were in flight on the victim ran again elsewhere with the same key,
    # found it in the file and did not act again.
    rerun = [t for t, o in done.items() if o.output["appended"] is False]
    assert rerun, "the kill hit no in-flight step"


async def test_timeout_is_reported_retryable(pools: Stack) -> None:
    task = TaskSubmitted(task_id=tid("slow"), workflow="executor-timeout", input={"seconds": 5})
    async with PodiumClient(pools.settings) as client:
        await client.submit(task)
        failure = await first_failure(pools, task.task_id)
    assert (failure.error.type, failure.error.error_class) == ("timeout", "retryable")
    assert "0.3s" in failure.error.message and failure.duration_ms < 2000


async def test_open_breaker_fails_fast_as_unavailable(pools: Stack) -> None:
    down = {"error": "retryable", "message": "provider down"}
    seen = []
    async with PodiumClient(pools.settings) as client:
        for _ in range(3):  # threshold 2: the third call meets an open circuit
            task = TaskSubmitted(task_id=tid("brk"), workflow="executor-fail", input=down)
            await client.submit(task)
            seen.append(await first_failure(pools, task.task_id))
    assert seen[0].error.message == "provider down"
    opened = seen[2].error
    assert (opened.type, opened.error_class) == ("unavailable", "retryable")
    assert "circuit for provider 'fail' is open" in opened.message


async def test_llm_chat_reports_usage_and_malformed_answers(
    pools: Stack, llm_server: FakeOpenAI
) -> None:
    ask = TaskSubmitted(
        task_id=tid("llm"),
        workflow="executor-llm",
        input={"messages": [{"role": "user", "content": "say hello"}]},
    )
    bad = TaskSubmitted(
        task_id=tid("llm-bad"),
        workflow="executor-llm",
        input={"messages": [{"role": "user", "content": "badshape"}]},
    )
    async with PodiumClient(pools.settings) as client:
        await client.submit(ask)
        await client.submit(bad)
        outcome = (await client.wait_for([ask.task_id], 30))[ask.task_id]
        failure = await first_failure(pools, bad.task_id)
    assert isinstance(outcome, TaskCompleted), outcome
    assert outcome.output["content"] == "echo: say hello"
    assert (outcome.usage.prompt_tokens, outcome.usage.completion_tokens) == (2, 2)
    assert outcome.usage.cost_usd > 0
    assert (failure.error.type, failure.error.error_class) == ("capability_error", "fatal")
    assert any(
        r["headers"].get("Idempotency-Key") == f"{ask.task_id}/chat" for r in llm_server.requests
    )


async def test_the_rate_limit_holds_for_the_pool_across_replicas(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    # Two replicas, one quota of 4 calls/s (burst 1): 13 steps spread over both
    # take 3 s from the first call to the last. A limit per replica would take 1.5 s.
    settings = stack_settings(kafka_bootstrap, tmp_path)
    topics = Topics(settings.topic_prefix)
    stack = Stack(settings, env={"PODIUM_RATE_LIMIT_PER_S": "4", "PODIUM_RATE_LIMIT_BURST": "1"})
    await ensure_topics(settings, topics.declarations(("quota",)))
    try:
        pair = [stack.spawn("executor", pool="quota") for _ in range(2)]
        stack.wait_ready(60)

        def settled() -> bool:  # the second join rebalanced: each holds its own share
            shares = [last_assignment(p.log_path) for p in pair]
            held = [p for s in shares for p in s]
            return all(shares) and len(held) == len(set(held)) == 8

        await wait_until(settled, 60, "both replicas holding a share of the partitions")
        producer = make_producer(settings, client_id="test-quota")
        await producer.start()
        try:
            for i in range(13):
                step = StepRequested(
                    task_id=tid("quota"),
                    step_id="call",
                    workflow="quota",
                    capability="echo",
                    pool="quota",
                    input={"i": i},
                    idempotency_key=f"quota-{uuid.uuid4().hex}",
                )
                value, headers = encode(step, source="test")
                await producer.send_and_wait(
                    topics.steps("quota"),
                    value=value,
                    key=step.step_id.encode(),  # podium topics are keyed; keyless is refused
                    headers=headers,
                    partition=i % 8,
                )
        finally:
            await producer.stop()
        done = [
            r
            for r in await read_topic(
                stack.bootstrap, topics.step_results, at_least=13, timeout_s=30
            )
            if isinstance(decode(r.value, list(r.headers)).payload, StepCompleted)
        ]
        assert len(done) == 13
        spread_s = (max(r.timestamp for r in done) - min(r.timestamp for r in done)) / 1000
        assert spread_s >= 2.6, f"13 calls in {spread_s:.2f} s: more than 4/s for the pool"
        shares = [last_assignment(p.log_path) for p in pair]
        assert all(shares) and len({p for s in shares for p in s}) == 8  # both did calls
    finally:
        stack.stop()
