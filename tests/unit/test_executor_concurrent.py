"""The concurrent consume loop with real SQLite and a scripted consumer: no
head-of-line blocking, contiguous offset commits, release on revocation,
inbox dedup and dead-lettering."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import ConsumerRecord, TopicPartition

from podium_contracts import Event, TaskAccepted, TaskSubmitted, encode
from podium_shared import Handler, UnitOfWork, make_engine
from podium_shared.concurrent_consumer import ConcurrentConsumeLoop, PartitionOffsets
from podium_shared.db import inbox, outbox

pytestmark = pytest.mark.unit
TOPIC = "t.tasks.v1"


@dataclass
class ScriptedConsumer:
    """Hands out queued records through getmany and records commits."""

    queued: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    commits: list[dict[int, int]] = field(default_factory=list)
    paused_parts: set[TopicPartition] = field(default_factory=set)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, p) for p in range(2)}

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_parts)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_parts |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_parts -= set(tps)

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if self.paused_parts or not self.queued:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        n = max_records or len(self.queued)
        taken, self.queued = self.queued[:n], self.queued[n:]
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        for r in taken:
            out.setdefault(TopicPartition(r.topic, r.partition), []).append(r)
        return out

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp.partition: o.offset for tp, o in offsets.items()})

    def committed(self, partition: int) -> int | None:
        return next((c[partition] for c in reversed(self.commits) if partition in c), None)


class Relay:
    def notify(self) -> None:
        return None


def record(offset: int, task_id: str, partition: int = 0, ce_id: str | None = None) -> Any:
    value, headers = encode(TaskSubmitted(task_id=task_id, workflow="w"), source="t", id=ce_id)
    return ConsumerRecord(
        topic=TOPIC,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value),
        headers=tuple(headers),
    )


def accept(event: Event, result: Any, uow: UnitOfWork) -> None:
    assert isinstance(event.payload, TaskSubmitted)
    uow.publish(
        "t.out",
        TaskAccepted(
            task_id=event.payload.task_id, workflow="w", accepted_at="2026-01-01T00:00:00Z"
        ),
        key="k",
    )  # type: ignore[arg-type]


def make(
    tmp_path: Path,
    execute: Callable[[Event], Awaitable[Any]],
    concurrency: int = 8,
    apply: Callable[[Event, Any, UnitOfWork], None] = accept,
) -> tuple[ConcurrentConsumeLoop, ScriptedConsumer, sa.Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    consumer = ScriptedConsumer()
    loop = ConcurrentConsumeLoop(
        consumer=consumer,  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=apply, execute=execute),
        group="g",
        service="svc",
        concurrency=concurrency,
        poll_timeout_ms=5,
    )
    return loop, consumer, engine


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def test_commit_point_is_the_first_unfinished_offset() -> None:
    offsets = PartitionOffsets()
    for o in (10, 11, 12, 13):
        offsets.started(o)
    assert offsets.commit_point() is None
    offsets.finished(11)
    offsets.finished(13)
    assert offsets.commit_point() is None  # 10 is still open
    offsets.finished(10)
    assert offsets.commit_point() == 12
    offsets.finished(12)
    assert offsets.commit_point() == 14 and offsets.in_flight == 0


async def test_a_slow_message_neither_blocks_others_nor_lets_its_offset_be_committed(
    tmp_path: Path,
) -> None:
    gate = asyncio.Event()
    ran: list[str] = []

    async def execute(event: Event) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        if event.payload.task_id == "slow":
            await gate.wait()
        ran.append(event.payload.task_id)

    loop, consumer, engine = make(tmp_path, execute)
    consumer.queued = [record(0, "slow"), record(1, "a"), record(2, "b"), record(0, "c", 1)]
    runner = asyncio.create_task(loop.run())
    await until(lambda: count(engine, inbox) == 3)
    assert ran == ["a", "b", "c"]
    await until(lambda: consumer.committed(1) == 1)
    assert consumer.committed(0) is None  # offset 0 still running: nothing committed
    gate.set()
    await until(lambda: consumer.committed(0) == 3)
    assert count(engine, outbox) == 4
    await loop.shutdown(1)
    await runner


async def test_no_more_than_concurrency_in_flight(tmp_path: Path) -> None:
    peak = running = 0

    async def execute(_event: Event) -> None:
        nonlocal peak, running
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1

    loop, consumer, _ = make(tmp_path, execute, concurrency=3)
    consumer.queued = [record(i, f"t{i}") for i in range(12)]
    runner = asyncio.create_task(loop.run())
    await until(lambda: consumer.committed(0) == 12)
    assert peak == 3
    await loop.shutdown(1)
    await runner


async def test_release_cancels_what_outlives_the_grace_and_commits_only_before_it(
    tmp_path: Path,
) -> None:
    cancelled: list[str] = []

    async def execute(event: Event) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        if event.payload.task_id == "stuck":
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append("stuck")
                raise

    loop, consumer, engine = make(tmp_path, execute)
    consumer.queued = [record(0, "ok"), record(1, "stuck"), record(2, "after")]
    runner = asyncio.create_task(loop.run())
    await until(lambda: count(engine, inbox) == 2)
    released = await loop.release([TopicPartition(TOPIC, 0)], timeout_s=0.1)
    assert released == 1 and cancelled == ["stuck"]
    assert consumer.committed(0) == 1  # "after" is done but sits behind the released one
    assert loop.in_flight == 0
    await loop.shutdown(1)
    await runner


async def test_duplicates_run_once_and_poison_is_dead_lettered(tmp_path: Path) -> None:
    calls: list[str] = []

    async def execute(event: Event) -> None:
        calls.append(event.envelope.id)
        await asyncio.sleep(0.01)

    loop, consumer, engine = make(tmp_path, execute)
    consumer.queued = [record(0, "a", ce_id="same"), record(1, "a", ce_id="same")]
    runner = asyncio.create_task(loop.run())
    await until(lambda: consumer.committed(0) == 2)
    consumer.queued = [record(2, "a", ce_id="same")]  # redelivered after commit
    await until(lambda: consumer.committed(0) == 3)
    assert calls == ["same"] and loop.stats.duplicates == 2
    bad = ConsumerRecord(
        topic=TOPIC,
        partition=1,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"{not json",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=9,
        headers=(("ce_type", b"podium.task.submitted.v1"),),
    )
    consumer.queued = [bad]
    await until(lambda: consumer.committed(1) == 1)
    with engine.connect() as conn:
        topics = sorted(r.topic for r in conn.execute(sa.select(outbox.c.topic)))
    assert topics == ["t.out", f"{TOPIC}.dlq"] and loop.stats.dead_lettered == 1
    await loop.shutdown(1)
    await runner


async def test_a_message_recorded_meanwhile_is_a_duplicate_and_its_batch_is_still_written(
    tmp_path: Path,
) -> None:
    # The whole batch is written in one go; when one message turns out to be in
    # the inbox already (another member handled it during a rebalance), the batch
    # is written again message by message and only that one is skipped.
    gate = asyncio.Event()

    async def execute(_event: Event) -> None:
        await gate.wait()

    loop, consumer, engine = make(tmp_path, execute)
    consumer.queued = [record(i, f"t{i}", ce_id=f"id{i}") for i in range(3)]
    runner = asyncio.create_task(loop.run())
    await until(lambda: loop.in_flight == 3)
    with engine.begin() as conn:
        conn.execute(
            inbox.insert().values(
                consumer="g", message_id="id1", source="t", topic=TOPIC, received_at=0.0
            )
        )
    gate.set()
    await until(lambda: consumer.committed(0) == 3)
    assert count(engine, outbox) == 2
    assert loop.stats.handled == 2 and loop.stats.duplicates == 1
    await loop.shutdown(1)
    await runner


async def test_a_failing_handler_dead_letters_only_its_own_message(tmp_path: Path) -> None:
    gate = asyncio.Event()

    async def execute(_event: Event) -> None:
        await gate.wait()

    def apply(event: Event, result: Any, uow: UnitOfWork) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        if event.payload.task_id == "bad":
            raise ValueError("cannot apply this one")
        accept(event, result, uow)

    loop, consumer, engine = make(tmp_path, execute, apply=apply)
    consumer.queued = [record(0, "a"), record(1, "bad"), record(2, "c")]
    runner = asyncio.create_task(loop.run())
    await until(lambda: loop.in_flight == 3)
    gate.set()
    await until(lambda: consumer.committed(0) == 3)
    with engine.connect() as conn:
        topics = sorted(r.topic for r in conn.execute(sa.select(outbox.c.topic)))
    assert topics == ["t.out", "t.out", f"{TOPIC}.dlq"]
    assert count(engine, inbox) == 3  # two handled, one dead-lettered (by its place in the log)
    assert loop.stats.handled == 2 and loop.stats.dead_lettered == 1
    await loop.shutdown(1)
    await runner


async def test_fetched_messages_waiting_for_a_slot_are_released_with_their_partition(
    tmp_path: Path,
) -> None:
    ran: list[str] = []

    async def execute(event: Event) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        ran.append(event.payload.task_id)
        if event.payload.task_id == "stuck":
            await asyncio.sleep(60)

    loop, consumer, engine = make(tmp_path, execute, concurrency=1)
    queued = [record(0, "stuck"), record(1, "waiting"), record(2, "waiting too")]
    consumer.queued = list(queued)
    runner = asyncio.create_task(loop.run())
    # "waiting" is fetched and queued for the slot (a buffer of one round of slots)
    await until(lambda: ran == ["stuck"] and len(consumer.queued) == 1)
    assert await loop.release([TopicPartition(TOPIC, 0)], timeout_s=0.05) == 1
    assert consumer.committed(0) is None and count(engine, inbox) == 0
    consumer.queued = queued[1:]  # redelivered from the last commit (here: to us again)
    await until(lambda: consumer.committed(0) == 3)
    assert ran == ["stuck", "waiting", "waiting too"]
    await loop.shutdown(1)
    await runner


async def test_a_clean_batch_is_written_in_two_statements_whatever_its_size(
    tmp_path: Path,
) -> None:
    # One inbox insert and one outbox insert for the whole batch, no savepoints:
    # the statements per message are what bounded the executor's throughput.
    gate = asyncio.Event()

    async def execute(_event: Event) -> None:
        await gate.wait()

    loop, consumer, engine = make(tmp_path, execute)
    consumer.queued = [record(i, f"t{i}") for i in range(6)]
    runner = asyncio.create_task(loop.run())
    await until(lambda: loop.in_flight == 6)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    gate.set()
    await until(lambda: consumer.committed(0) == 6)
    writes = [s.split()[0] for s in statements if not s.startswith("SELECT")]
    assert writes == ["INSERT", "INSERT"] and count(engine, outbox) == 6
    await loop.shutdown(1)
    await runner
