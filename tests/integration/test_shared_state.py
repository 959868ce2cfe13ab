"""One database per role, on the real broker with real executor processes: two
replicas of a pool on SQLite files of their own refuse to process (exit 2, one
line naming PODIUM_EXECUTOR_DATABASE_URL) and handle no step together; the same
two on one PostgreSQL database run side by side. Replicas on one machine sharing
one file (``podium up --executors 3``) are test_executor.py's pools."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from podium.stack import ServiceProcess, Stack
from podium_contracts import StepCompleted, StepRequested, decode, encode
from podium_shared import Settings, Topics
from podium_shared.kafka import ensure_topics, make_producer
from podium_shared.shared_state import LocalState
from tests.conftest import stack_settings
from tests.support.kafka import read_topic
from tests.support.postgres import scratch_databases

pytestmark = pytest.mark.integration

POOL = "default"
PARTITIONS = 8  # podium.steps.<pool>.v1


@pytest.fixture
def replicas(kafka_bootstrap: str, tmp_path: Path) -> Iterator[list[Stack]]:
    """Two homes (one per machine, as it were) on one topic prefix: a Stack each,
    not started; a test spawns an executor in each."""
    first = stack_settings(kafka_bootstrap, tmp_path / "machine-a")
    stacks = [Stack(first), Stack(first.model_copy(update={"home": tmp_path / "machine-b"}))]
    for s in stacks:
        s.settings.home.mkdir(parents=True)
    try:
        yield stacks
    finally:
        for s in stacks:
            s.stop()


def on_database(stacks: list[Stack], url: str) -> None:
    for s in stacks:
        s.settings = s.settings.model_copy(update={"executor_database_url": url})


async def send_steps(settings: Settings, n: int) -> list[str]:
    """``n`` echo steps, one per partition in turn; their step ids."""
    topics = Topics(settings.topic_prefix)
    producer = make_producer(settings, client_id="test-steps")
    await producer.start()
    ids = []
    try:
        for i in range(n):
            step = StepRequested(
                task_id=f"guard-{uuid.uuid4().hex[:8]}",
                step_id=f"echo-{i}",
                workflow="guard",
                capability="echo",
                pool=POOL,
                input={"i": i},
                idempotency_key=f"guard-{uuid.uuid4().hex}",
            )
            value, headers = encode(step, source="test")
            await producer.send_and_wait(
                topics.steps(POOL),
                value=value,
                key=step.task_id.encode(),
                headers=headers,
                partition=i % PARTITIONS,
            )
            ids.append(step.task_id)
    finally:
        await producer.stop()
    return ids


async def completed(settings: Settings, at_least: int, timeout_s: float) -> list[str]:
    """The task ids of the StepCompleted records on the results topic."""
    records = await read_topic(
        settings.require_bootstrap(),
        Topics(settings.topic_prefix).step_results,
        at_least=at_least,
        timeout_s=timeout_s,
    )
    payloads = [decode(r.value, list(r.headers)).payload for r in records]
    return [p.task_id for p in payloads if isinstance(p, StepCompleted)]


def log_events(p: ServiceProcess) -> list[dict[str, Any]]:
    out = []
    for line in p.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(orjson.loads(line))
    return out


def handled(p: ServiceProcess) -> int:
    (stopped,) = [e for e in log_events(p) if e.get("event") == "service stopped"]
    return int(stopped["handled"])


async def exit_code(p: ServiceProcess, timeout_s: float = 90) -> int:
    try:
        return await asyncio.to_thread(p.proc.wait, timeout_s)
    except subprocess.TimeoutExpired:
        tail = p.log_path.read_text(errors="replace")[-4000:]
        raise AssertionError(f"{p.instance} still running after {timeout_s} s:\n{tail}") from None


def assert_refused_with_the_setting(p: ServiceProcess) -> None:
    text = p.log_path.read_text(errors="replace")
    last = text.strip().splitlines()[-1]
    assert last.startswith("executor: refusing to process:"), text[-3000:]
    assert "PODIUM_EXECUTOR_DATABASE_URL" in last and "one PostgreSQL database" in last
    assert "Traceback" not in text


async def test_replicas_on_sqlite_files_of_their_own_both_refuse(replicas: list[Stack]) -> None:
    a, b = replicas
    settings = a.settings
    await ensure_topics(settings, Topics(settings.topic_prefix).declarations((POOL,)))
    first = a.spawn("executor", pool=POOL)
    a.wait_ready(60)
    # Alone on its file, a replica processes.
    (alone,) = await send_steps(settings, 1)
    assert await completed(settings, 1, 30) == [alone]
    second = b.spawn("executor", pool=POOL)
    # The second one joins: the layout is unsafe for both, and both say what to change.
    codes = await asyncio.gather(exit_code(first), exit_code(second))
    assert codes == [2, 2]
    for p in (first, second):
        assert_refused_with_the_setting(p)
    assert (handled(first), handled(second)) == (1, 0)
    assert not any(f.exists() for f in b.ready_files())  # never ready: never processed


class ReplicaElsewhere:
    """A member of the pool's group with another machine's SQLite file in its client
    id: it fetches like a live replica and never commits."""

    def __init__(self, settings: Settings, n: int) -> None:
        topics = Topics(settings.topic_prefix)
        elsewhere = LocalState.of("sqlite:////data/executor-default.db", host="another-machine")
        self.consumer = AIOKafkaConsumer(
            topics.steps(POOL),
            bootstrap_servers=settings.require_bootstrap(),
            group_id=topics.group("executor", POOL),
            client_id=elsewhere.client_id(f"executor-{POOL}-{n}"),
            enable_auto_commit=False,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
        )
        self._poller: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ReplicaElsewhere:
        await self.consumer.start()
        self._poller = asyncio.create_task(self._poll())
        while not self.consumer.assignment():
            await asyncio.sleep(0.1)
        return self

    async def _poll(self) -> None:
        while True:
            await self.consumer.getmany(timeout_ms=100)

    async def __aexit__(self, *_: object) -> None:
        assert self._poller is not None
        self._poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._poller
        await self.consumer.stop()


async def test_a_replica_that_meets_another_file_handles_no_step(
    replicas: list[Stack],
) -> None:
    """Another replica on another machine holds half the partitions; steps wait on
    every partition. The replica that joins refuses before it handles any of them,
    and leaves in time even when the group rebalances again while it lingers."""
    a, _ = replicas
    settings = a.settings
    await ensure_topics(settings, Topics(settings.topic_prefix).declarations((POOL,)))
    await send_steps(settings, PARTITIONS)
    async with ReplicaElsewhere(settings, 1):
        replica = a.spawn("executor", pool=POOL)
        while "unshared state" not in {e.get("event") for e in log_events(replica)}:
            assert replica.proc.poll() is None, replica.log_path.read_text()[-3000:]
            await asyncio.sleep(0.05)
        async with ReplicaElsewhere(settings, 2):  # a rebalance while it lingers
            assert await exit_code(replica, 30) == 2
    assert_refused_with_the_setting(replica)
    assert handled(replica) == 0
    # It did hold partitions with steps waiting on them.
    (refusal,) = [e for e in log_events(replica) if e.get("event") == "unshared state"]
    assert refusal["held_unhandled"]
    assert await completed(settings, 1, 3) == []


async def test_replicas_on_one_postgresql_database_run_side_by_side(
    replicas: list[Stack], postgres_url: str
) -> None:
    # A database of its own: the session's is migrated by other roles' tests, and one
    # database holds one role's revisions.
    with scratch_databases(postgres_url, ("executor",)) as urls:
        await _side_by_side(replicas, urls["executor"])


async def _side_by_side(replicas: list[Stack], database_url: str) -> None:
    on_database(replicas, database_url)
    settings = replicas[0].settings
    await ensure_topics(settings, Topics(settings.topic_prefix).declarations((POOL,)))
    pair = [s.spawn("executor", pool=POOL) for s in replicas]
    for s in replicas:
        s.wait_ready(90)

    def shares() -> list[list[str]]:
        out = []
        for p in pair:
            assigned = [e for e in log_events(p) if e.get("event") == "partitions assigned"]
            out.append(list(assigned[-1]["partitions"]) if assigned else [])
        return out

    # Both hold a share once the second join has rebalanced the group.
    deadline = asyncio.get_running_loop().time() + 60
    while not all(shares()) or sum(len(s) for s in shares()) != PARTITIONS:
        assert asyncio.get_running_loop().time() < deadline, shares()
        await asyncio.sleep(0.2)
    sent = await send_steps(settings, 2 * PARTITIONS)
    done = await completed(settings, len(sent), 60)
    assert sorted(done) == sorted(sent)
    assert all(p.proc.poll() is None for p in pair)
    for s in replicas:
        s.stop()
    assert [p.proc.returncode for p in pair] == [0, 0]
    assert sum(handled(p) for p in pair) == len(sent)
    assert all(handled(p) > 0 for p in pair)
