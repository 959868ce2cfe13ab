"""Fault drills on Apache Kafka: the broker itself dies, a cluster loses a leader, an
executor dies mid-batch. Each counts tasks and effects per idempotency key
(``effect.record``): every task completes, no effect happens twice.

These need a broker of their own to kill, so they start one (a single KRaft node, or
three) rather than using the session's; they run in the Kafka tier only (Tansu keeps
nothing across a restart, so a broker kill there is a different, lossy, event).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import TaskCompleted, TaskSubmitted
from podium_shared import Topics
from podium_shared.kafka_broker import KafkaBroker, KafkaNode
from tests.conftest import stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.kafka_only]


def keys_in(path: Path) -> collections.Counter[str]:
    lines = path.read_bytes().splitlines() if path.exists() else []
    return collections.Counter(orjson.loads(line)["key"] for line in lines if line.strip())


class EffectClock:
    """When the effect count last grew, sampled every 20 ms: the longest stall after a
    fault is how long the stack took to recover from it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, int]] = []

    async def watch(self) -> None:
        while True:
            self.samples.append((time.monotonic(), sum(keys_in(self.path).values())))
            await asyncio.sleep(0.02)

    def longest_stall_after(self, t0: float) -> float:
        grew = [t for (t, n), (_, m) in zip(self.samples, self.samples[1:], strict=False) if m > n]
        after = [t0, *[t for t in grew if t >= t0]]
        return max((b - a for a, b in itertools.pairwise(after)), default=0.0)


async def run_batch(
    stack: Stack,
    path: Path,
    n: int,
    *,
    hold_s: float,
    fault: Callable[[], Awaitable[None]],
    timeout_s: float = 240,
) -> dict[str, TaskCompleted]:
    """Submit ``n`` effect tasks, inject ``fault`` once effects are flowing, and wait."""
    tasks = [
        TaskSubmitted(
            task_id=f"drill-{uuid.uuid4().hex[:10]}",
            workflow="executor-effect",
            input={"path": str(path), "value": i, "hold_s": hold_s},
        )
        for i in range(n)
    ]
    async with PodiumClient(stack.settings) as client:
        await asyncio.gather(*(client.submit(t) for t in tasks))
        waiting = asyncio.create_task(client.wait_for([t.task_id for t in tasks], timeout_s))
        deadline = time.monotonic() + 60
        while sum(keys_in(path).values()) < n // 5:  # mid-batch
            assert time.monotonic() < deadline, "no effects before the fault"
            await asyncio.sleep(0.02)
        await fault()
        outcomes = await waiting
    done = {k: v for k, v in outcomes.items() if isinstance(v, TaskCompleted)}
    assert len(done) == n, [v for v in outcomes.values() if not isinstance(v, TaskCompleted)][:3]
    counts = keys_in(path)
    assert len(counts) == n and set(counts.values()) == {1}, counts.most_common(3)
    return done


def test_kill_9_of_the_only_broker_then_restart_loses_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    kafka = KafkaBroker(tmp_path / "kafka").start()
    path = tmp_path / "effects.jsonl"
    try:
        settings = stack_settings(kafka.bootstrap, tmp_path / "home")
        with Stack(settings, pools=("work",)) as stack:

            async def kill_and_restart_broker() -> None:
                kafka.kill(kafka.members[0])
                await asyncio.sleep(2)  # clients see it gone and start retrying
                await asyncio.to_thread(kafka.restart, kafka.members[0])

            asyncio.run(run_batch(stack, path, 200, hold_s=0.02, fault=kill_and_restart_broker))
    finally:
        kafka.stop()


async def leader_of(bootstrap: str, topic: str) -> int:
    """The node that leads most partitions of ``topic``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        leaders = collections.Counter(p["leader"] for p in described["partitions"])
        return leaders.most_common(1)[0][0]
    finally:
        await admin.close()


def test_three_node_cluster_survives_the_loss_of_a_leader(tmp_path: Path) -> None:
    kafka = KafkaBroker(tmp_path / "kafka", nodes=3, heap_mb=256).start()
    path = tmp_path / "effects.jsonl"
    try:
        settings = stack_settings(kafka.bootstrap, tmp_path / "home", replication_factor=3)
        with Stack(settings, pools=("work",)) as stack:
            topics = Topics(settings.topic_prefix)

            def node(node_id: int) -> KafkaNode:
                return next(n for n in kafka.members if n.node_id == node_id)

            async def kill_leaders_then_bring_back() -> None:
                # One at a time: two of three voters down would stop the KRaft quorum
                # itself, which is an outage, not a failover.
                for topic in (topics.tasks, topics.steps("work")):
                    leader = node(await leader_of(kafka.bootstrap, topic))
                    kafka.kill(leader)
                    await asyncio.sleep(3)  # the cluster elects new leaders meanwhile
                    await asyncio.to_thread(kafka.restart, leader)

            asyncio.run(
                run_batch(stack, path, 200, hold_s=0.02, fault=kill_leaders_then_bring_back)
            )
    finally:
        kafka.stop()


def test_kill_9_of_one_of_two_executors_recovers_and_reports_the_time(
    tmp_path: Path, kafka_bootstrap: str, record_property: Callable[[str, object], None]
) -> None:
    path = tmp_path / "effects.jsonl"
    settings = stack_settings(kafka_bootstrap, tmp_path / "home")
    clock = EffectClock(path)
    with Stack(settings, executors=2, pools=("work",)) as stack:
        victim = next(p for p in stack.processes if p.name == "executor")
        killed_at: list[float] = []

        async def kill_executor() -> None:
            stack.kill(victim)
            killed_at.append(time.monotonic())

        async def drill() -> None:
            watcher = asyncio.create_task(clock.watch())
            try:
                await run_batch(stack, path, 200, hold_s=0.1, fault=kill_executor)
            finally:
                watcher.cancel()

        asyncio.run(drill())
    assert victim.proc.returncode == -9
    stall = clock.longest_stall_after(killed_at[0])
    record_property("recovery_s", round(stall, 2))
    print(f"\nexecutor kill -9: longest stall of effects after the kill {stall:.2f}s")
    # The survivor takes the victim's partitions within the session timeout (10 s) and
    # a rebalance; far longer means it never did and the batch finished some other way.
    assert stall < 30, stall
