"""Database work off the event loop (issue 18, item 3): on PostgreSQL a batch's
write runs on the engine's database thread, so the loop keeps ticking and other
consumers go on meanwhile; on SQLite it stays on the loop (podium_shared.dbthread)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from podium_contracts import Event, TaskSubmitted
from podium_shared import ConsumeLoop, Handler, OutboxRelay, UnitOfWork, make_engine
from podium_shared.concurrent_consumer import ConcurrentConsumeLoop
from podium_shared.db import inbox, outbox
from podium_shared.dbthread import DbThread, call_on_loop, db_threads, off_loop
from podium_shared.outbox import OutgoingMessage, write_outbox
from tests.support.waiting import wait_until
from tests.unit.test_claiming_relay import Sender
from tests.unit.test_consume_loop import RecordingConsumer, Relay, record, submitted
from tests.unit.test_executor_concurrent import ScriptedConsumer, accept
from tests.unit.test_executor_concurrent import record as step_record

pytestmark = pytest.mark.unit

SLOW_S = 1.0  # how long the slow batch's transaction holds the database


def test_postgresql_leaves_the_loop_and_a_sqlite_file_stays_on_it() -> None:
    assert off_loop("postgresql")
    assert not off_loop("sqlite")


def test_one_engine_has_one_set_of_threads_shared_by_its_loops(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    other = sa.create_engine(f"sqlite:///{tmp_path / 'y.db'}")
    try:
        assert db_threads(engine) is db_threads(engine)
        assert db_threads(engine) is not db_threads(other)
        assert not db_threads(engine).writes.threaded
    finally:
        engine.dispose()
        other.dispose()


async def test_a_thread_runs_phases_in_order_in_the_callers_context() -> None:
    db = DbThread(threaded=True)
    current: contextvars.ContextVar[str] = contextvars.ContextVar("current", default="")
    ran: list[tuple[int, str, bool]] = []

    def phase(i: int) -> int:
        ran.append((i, current.get(), threading.current_thread() is threading.main_thread()))
        return i * 10

    async def ask(i: int) -> int:
        current.set(f"span-{i}")
        return await db.run(phase, i)

    try:
        assert await asyncio.gather(*(ask(i) for i in range(20))) == [i * 10 for i in range(20)]
    finally:
        db.close()
    assert ran == [(i, f"span-{i}", False) for i in range(20)]


async def test_an_event_woken_from_the_database_thread_wakes_the_loop() -> None:
    db = DbThread(threaded=True)
    woken = asyncio.Event()
    try:
        await db.run(call_on_loop, woken.set)
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        db.close()
    call_on_loop(woken.clear)  # on the loop: at once
    assert not woken.is_set()


async def test_a_phase_cancelled_meanwhile_still_ends_before_its_caller_does() -> None:
    db = DbThread(threaded=True)
    started, release = threading.Event(), threading.Event()
    done: list[str] = []

    def phase() -> None:
        started.set()
        release.wait(10)
        done.append("committed")

    try:
        caller = asyncio.create_task(db.run(phase))
        await wait_until(started.is_set, 5, "the phase started")
        caller.cancel()
        await asyncio.sleep(0)
        assert not caller.done()  # waits for the thread, as the call on the loop did
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert done == ["committed"]
    finally:
        release.set()
        db.close()


@pytest.fixture()
def pg_engines(postgres_url: str) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """Two services' engines on one PostgreSQL server: a slow one and another."""
    slow, other = make_engine(postgres_url), make_engine(postgres_url)
    try:
        yield slow, other
    finally:
        slow.dispose()
        other.dispose()


def pg_loop(engine: sa.Engine, apply: Any, group: str) -> ConsumeLoop:
    return ConsumeLoop(
        consumer=RecordingConsumer(),  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=apply),
        group=group,
        service=group,
    )


class Lateness:
    """An asyncio task measuring how late its own wake-ups come: a blocked loop shows."""

    def __init__(self, tick_s: float = 0.01) -> None:
        self.tick_s = tick_s
        self.worst_s = 0.0
        self.ticks = 0

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(self.tick_s)
            self.worst_s = max(self.worst_s, time.perf_counter() - before - self.tick_s)
            self.ticks += 1


async def test_a_slow_write_on_postgresql_blocks_neither_the_loop_nor_another_service(
    pg_engines: tuple[sa.Engine, sa.Engine],
) -> None:
    slow_engine, other_engine = pg_engines
    # A row committed before, for the slow service's own relay to send meanwhile.
    row = uuid.uuid4().bytes
    with slow_engine.begin() as conn:
        conn.execute(outbox.delete())
        write_outbox(conn, [OutgoingMessage("t.out", b"k", row, [])])
    relay = OutboxRelay(slow_engine, Sender())
    in_write = threading.Event()

    def slow_apply(event: Event, _r: None, uow: UnitOfWork) -> None:
        in_write.set()
        uow.conn.execute(sa.text("SELECT pg_sleep(:s)"), {"s": SLOW_S})

    def quick_apply(event: Event, _r: None, uow: UnitOfWork) -> None:
        assert isinstance(event.payload, TaskSubmitted)

    run = uuid.uuid4().hex[:8]
    slow = pg_loop(slow_engine, slow_apply, f"slow-{run}")
    other = pg_loop(other_engine, quick_apply, f"other-{run}")
    lateness = Lateness()
    ticking = asyncio.create_task(lateness.run())
    try:
        started = time.perf_counter()
        writing = asyncio.create_task(slow.process([record(0, *submitted(f"slow-{run}"))]))
        await wait_until(in_write.is_set, 10, "the slow batch's write began")
        # Meanwhile another service's consumer settles a batch of its own.
        await other.process([record(i, *submitted(f"o{i}-{run}")) for i in range(5)])
        assert not writing.done(), "the other service waited for the slow write"
        assert other.stats.handled == 5
        # and the slow service's relay sent what had committed, on a thread of its own.
        assert await relay.publish_pending() == 1
        assert not writing.done(), "the relay waited for the slow write"
        await writing
        assert time.perf_counter() - started >= SLOW_S
    finally:
        ticking.cancel()
    assert slow.stats.handled == 1
    assert relay.published == 1
    # Blocked, the loop would have been ~1 s late; off the loop it kept ticking.
    assert lateness.worst_s < 0.25, f"the event loop stalled {lateness.worst_s:.3f} s"
    assert lateness.ticks >= 10


async def test_a_loop_stopped_during_a_postgresql_write_ends_after_it_committed(
    pg_engines: tuple[sa.Engine, sa.Engine],
) -> None:
    engine, _ = pg_engines
    in_write = threading.Event()

    def slow_apply(event: Event, _r: None, uow: UnitOfWork) -> None:
        in_write.set()
        uow.conn.execute(sa.text("SELECT pg_sleep(:s)"), {"s": SLOW_S / 2})

    run = uuid.uuid4().hex[:8]
    loop = pg_loop(engine, slow_apply, f"stop-{run}")
    writing = asyncio.create_task(loop.process([record(0, *submitted(f"t-{run}"))]))
    await wait_until(in_write.is_set, 10, "the write began")
    writing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writing
    # The batch in hand was written (its offset uncommitted: a redelivery is a duplicate).
    with engine.connect() as conn:
        recorded = conn.execute(
            sa.select(sa.func.count()).select_from(inbox).where(inbox.c.consumer == f"stop-{run}")
        ).scalar_one()
    assert recorded == 1


async def test_the_executor_loop_runs_steps_while_a_batch_is_written_on_postgresql(
    pg_engines: tuple[sa.Engine, sa.Engine],
) -> None:
    engine, _ = pg_engines
    in_write, written = threading.Event(), threading.Event()
    executed: list[str] = []

    async def execute(event: Event) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        executed.append(event.payload.task_id)

    def apply(event: Event, result: Any, uow: UnitOfWork) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        if event.payload.task_id == "slow":
            in_write.set()
            uow.conn.execute(sa.text("SELECT pg_sleep(:s)"), {"s": SLOW_S})
            written.set()
        accept(event, result, uow)

    run = uuid.uuid4().hex[:8]
    consumer = ScriptedConsumer(queued=[step_record(0, "slow", ce_id=f"slow-{run}")])
    loop = ConcurrentConsumeLoop(
        consumer=consumer,  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=apply, execute=execute),
        group=f"exec-{run}",
        service="executor",
        concurrency=8,
        poll_timeout_ms=5,
    )
    running = asyncio.create_task(loop.run())
    try:
        await wait_until(in_write.is_set, 10, "the slow batch's write began")
        consumer.queued += [step_record(i, f"s{i}", 1, f"s{i}-{run}") for i in range(5)]
        # Fetched and executed while the first step's write holds the database.
        await wait_until(lambda: len(executed) == 6, 10, "the other steps executed")
        assert not written.is_set(), "the steps waited for the slow write"
        await wait_until(lambda: loop.stats.handled == 6, 10, "every step written")
        await wait_until(lambda: consumer.committed(1) == 5, 10, "the offsets committed")
    finally:
        await loop.shutdown(5)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert consumer.committed(0) == 1
