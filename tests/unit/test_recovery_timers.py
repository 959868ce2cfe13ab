"""Recovery's use case and its durable timers against a real SQLite database."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_contracts import (
    RetryPolicy,
    StepAbandoned,
    StepError,
    StepFailed,
    StepRequested,
    StepRetryScheduled,
    decode,
)
from podium_recovery import Abandon, Recovery, RecoverySettings, Retry
from podium_recovery import timers as timer_module
from podium_recovery.migrations import HISTORY
from podium_recovery.migrations.skeleton import to_baseline
from podium_recovery.state import failures, metadata, timers
from podium_recovery.timers import (
    LostRace,
    fire_due,
    make_timer_loop,
    pending,
    round_wait_s,
    schedule,
)
from podium_shared import OutboxRelay, Topics, UnitOfWork, dlq_headers, make_engine
from podium_shared.db import outbox
from podium_shared.migrations import head_revision, migrate, open_database
from tests.support.clock import FakeClock, run_in_virtual_time

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
TOPICS = Topics("t")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(f"sqlite:///{tmp_path / 'recovery.db'}", metadata)
    yield e
    e.dispose()


def request(attempt: int = 1, **kw: object) -> StepRequested:
    return StepRequested(
        task_id="t1",
        step_id="s1",
        workflow="wf",
        capability="flaky",
        pool="default",
        attempt=attempt,
        idempotency_key="t1/s1",
        **kw,  # type: ignore[arg-type]
    )


def failure(attempt: int = 1, error_class: str = "retryable", **kw: object) -> StepFailed:
    return StepFailed.for_step(
        request(attempt, **kw),
        error=StepError(type="unavailable", message="down", error_class=error_class),  # type: ignore[arg-type]
        duration_ms=1.0,
    )


def outbox_rows(engine: Engine) -> list[sa.Row[tuple[object, ...]]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(outbox).order_by(outbox.c.id)).all())


def handle(engine: Engine, recovery: Recovery, f: StepFailed) -> object:
    with engine.begin() as conn:
        uow = UnitOfWork(conn, source="recovery")
        decision = recovery.step_failed(f, uow)
        uow.flush()
    return decision


def recovery() -> Recovery:
    return Recovery(TOPICS, RecoverySettings(), clock=lambda: NOW, rng=random.Random(3))


def test_a_retry_stores_a_timer_and_tells_the_router_in_the_same_transaction(
    engine: Engine,
) -> None:
    decision = handle(engine, recovery(), failure(1))
    assert isinstance(decision, Retry)
    rows = outbox_rows(engine)
    assert [r.topic for r in rows] == [TOPICS.step_results]
    event = decode(rows[0].value, [(k, v.encode("latin-1")) for k, v in rows[0].headers])
    assert isinstance(event.payload, StepRetryScheduled)
    assert (event.payload.attempt, event.payload.due_at) == (2, decision.due_at)
    with engine.connect() as conn:
        timer = conn.execute(sa.select(timers)).one()
        recorded = conn.execute(sa.select(failures)).one()
    assert timer.topic == TOPICS.steps("default") and timer.key == b"t1/s1"
    assert timer.due_at == decision.due_at.timestamp()
    assert (recorded.decision, recorded.retry_pool, recorded.delay_s) == (
        "retry",
        "default",
        decision.delay_s,
    )


def test_a_fatal_failure_is_dead_lettered_with_its_headers_and_abandoned(engine: Engine) -> None:
    decision = handle(engine, recovery(), failure(1, "fatal"))
    assert isinstance(decision, Abandon)
    dlq, abandoned = outbox_rows(engine)
    assert dlq.topic == TOPICS.dlq(TOPICS.steps("default")) and dlq.key == b"t1/s1"
    headers = [(k, v.encode("latin-1")) for k, v in dlq.headers]
    meta = dlq_headers(headers)
    assert meta["reason"] == "step_abandoned" and meta["error-class"] == "fatal"
    assert meta["task-id"] == "t1" and meta["step-id"] == "s1" and meta["attempts"] == "1"
    assert meta["original-topic"] == TOPICS.steps("default") and meta["abandoned"] == "fatal"
    original = decode(dlq.value, headers)
    assert isinstance(original.payload, StepRequested) and original.payload.attempt == 1
    event = decode(abandoned.value, [(k, v.encode("latin-1")) for k, v in abandoned.headers])
    assert isinstance(event.payload, StepAbandoned)
    assert event.payload.dlq is not None and event.payload.dlq.record_id == original.envelope.id
    with engine.connect() as conn:
        assert pending(conn) == 0
        row = conn.execute(sa.select(failures)).one()
    assert (row.decision, row.dlq_record_id) == ("abandon", original.envelope.id)


def test_a_second_report_of_the_same_attempt_schedules_no_second_retry(engine: Engine) -> None:
    r = recovery()
    assert isinstance(handle(engine, r, failure(1)), Retry)
    assert handle(engine, r, failure(1)) is None
    with engine.connect() as conn:
        assert pending(conn) == 1
        decisions = [x.decision for x in conn.execute(sa.select(failures).order_by(failures.c.id))]
    assert decisions == ["retry", "duplicate"]
    # but a replayed step that fails again after being abandoned is decided afresh
    assert isinstance(handle(engine, r, failure(3)), Abandon)
    assert isinstance(handle(engine, r, failure(3)), Abandon)


def test_a_timer_fires_once_when_due_and_carries_its_fixed_ce_id(engine: Engine) -> None:
    with engine.begin() as conn:
        ce_id = schedule(conn, TOPICS, request(2, retry=RetryPolicy()), NOW + timedelta(seconds=5))
    with engine.begin() as conn:
        assert fire_due(conn, (NOW + timedelta(seconds=4.9)).timestamp()) == 0
    assert outbox_rows(engine) == []
    with engine.begin() as conn:
        assert fire_due(conn, (NOW + timedelta(seconds=5)).timestamp()) == 1
    with engine.begin() as conn:
        assert fire_due(conn, (NOW + timedelta(hours=1)).timestamp()) == 0
    (row,) = outbox_rows(engine)
    assert row.topic == TOPICS.steps("default") and row.key == b"t1/s1"
    event = decode(row.value, [(k, v.encode("latin-1")) for k, v in row.headers])
    assert event.envelope.id == ce_id
    assert isinstance(event.payload, StepRequested) and event.payload.attempt == 2


def test_a_failed_firing_transaction_keeps_the_timer(engine: Engine) -> None:
    with engine.begin() as conn:
        schedule(conn, TOPICS, request(2), NOW)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        assert fire_due(conn, NOW.timestamp()) == 1
        raise RuntimeError("crash before commit")
    with engine.connect() as conn:
        assert pending(conn) == 1
    assert outbox_rows(engine) == []


def test_two_firers_racing_on_one_database_fire_each_timer_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = make_engine(url, metadata), make_engine(url, metadata)
    try:
        with first.begin() as conn:
            for i in range(200):
                schedule(conn, TOPICS, request(2).model_copy(update={"step_id": f"s{i}"}), NOW)
        fired = [0, 0]
        start = threading.Barrier(2)

        def fire(index: int, engine: Engine) -> None:
            start.wait()
            while True:
                try:
                    with engine.begin() as conn:
                        n = fire_due(conn, NOW.timestamp(), limit=7)
                except (sa.exc.OperationalError, LostRace):
                    continue  # the other firer won these rows, or holds the lock: again
                if n == 0:
                    return
                fired[index] += n

        threads = [
            threading.Thread(target=fire, args=(i, e)) for i, e in enumerate((first, second))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        rows = outbox_rows(first)
        assert sum(fired) == 200 == len(rows)
        assert len({r.key for r in rows}) == 200
    finally:
        first.dispose()
        second.dispose()


class _Producer:
    """Records sends; the relay only needs ``send`` returning an awaitable."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None]] = []

    async def send(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: object = None,
    ) -> asyncio.Future[None]:
        self.sent.append((topic, key))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_the_timer_loop_fires_due_timers_through_the_outbox(engine: Engine) -> None:
    # In virtual time (tests/support/clock.py): the loop's rounds every 10 ms and the
    # relay's waits take no real time, and "not before it is due" is exact.
    clock = FakeClock(NOW.timestamp())
    with engine.begin() as conn:
        schedule(conn, TOPICS, request(2), NOW + timedelta(seconds=1))
    producer = _Producer()
    wanted = [(TOPICS.steps("default"), b"t1/s1")]

    async def main() -> None:
        relay = OutboxRelay(engine, producer)
        loop = asyncio.create_task(make_timer_loop(engine, interval_s=0.01, clock=clock)(relay))
        relaying = asyncio.create_task(relay.run())
        try:
            await asyncio.sleep(0.95)  # some 95 rounds before it is due
            assert producer.sent == []
            await asyncio.sleep(0.1)  # due at 1 s: fired and sent within a round
            assert producer.sent == wanted
            await asyncio.sleep(2)  # and only once
            assert producer.sent == wanted
        finally:
            loop.cancel()
            relaying.cancel()
            await asyncio.gather(loop, relaying, return_exceptions=True)

    run_in_virtual_time(clock, main())
    with engine.connect() as conn:
        assert pending(conn) == 0


def test_migrate_adds_the_new_columns_to_a_skeleton_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = sa.MetaData()
    sa.Table(
        "failures",
        old,
        sa.Column("id", sa.Integer, primary_key=True),
        *(
            sa.Column(n, sa.String(200), nullable=False)
            for n in ("task_id", "step_id", "error_type", "error_class", "message", "decision")
        ),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("dlq_record_id", sa.String(200)),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(  # the skeleton's inbox, keyed by ce_id alone
        "inbox",
        old,
        sa.Column("consumer", sa.String(200), primary_key=True),
        sa.Column("message_id", sa.String(200), primary_key=True),
        sa.Column("topic", sa.String(300), nullable=False),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    skeleton = sa.create_engine(url)
    old.create_all(skeleton)
    skeleton.dispose()
    engine = open_database(url, HISTORY, legacy=to_baseline)
    try:
        inspector = sa.inspect(engine)
        columns = {c["name"] for c in inspector.get_columns("failures")}
        assert {"retry_pool", "delay_s", "due_at", "detail", "pool"} <= columns
        assert "timers" in inspector.get_table_names()
        assert migrate(engine, HISTORY, legacy=to_baseline) == head_revision(HISTORY)  # idempotent
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("due", "wait"),
    [
        (None, 1.0),  # nothing pending: the idle round
        (100.05, 0.1),  # due sooner than a round: not before interval_s
        (100.4, 0.4),  # due within the idle round: wake when it is due
        (130.0, 1.0),  # due later: still look once per idle round
        (90.0, 0.1),  # overdue yet not fired (another replica holds it): no busy loop
    ],
)
def test_the_timer_loop_waits_until_the_next_timer_within_its_bounds(
    due: float | None, wait: float
) -> None:
    assert round_wait_s(due, 100.0, interval_s=0.1, idle_s=1.0) == pytest.approx(wait)


def test_an_idle_timer_loop_looks_once_per_idle_round_and_a_scheduled_timer_wakes_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 18: idle, the loop read its table ten times a second.
    clock = FakeClock(NOW.timestamp())
    rounds: list[float] = []
    real_fire_due = timer_module.fire_due

    def counting(conn: Any, now: float, limit: int = 500) -> int:
        rounds.append(now)
        return real_fire_due(conn, now, limit)

    monkeypatch.setattr(timer_module, "fire_due", counting)
    producer = _Producer()
    wake = asyncio.Event()

    async def main() -> None:
        relay = OutboxRelay(engine, producer)
        loop = asyncio.create_task(
            make_timer_loop(engine, interval_s=0.1, idle_s=1.0, clock=clock, wake=wake)(relay)
        )
        relaying = asyncio.create_task(relay.run())
        try:
            await asyncio.sleep(5.05)
            assert len(rounds) == 6  # at 0, 1, 2, 3, 4 and 5 s
            # A retry scheduled here, due in 0.3 s, mid-way through an idle round:
            with engine.begin() as conn:
                schedule(conn, TOPICS, request(2), NOW + timedelta(seconds=5.35))
            wake.set()
            await asyncio.sleep(0.25)
            assert producer.sent == []
            await asyncio.sleep(0.1)  # fired when due, not at the next idle round (6 s)
            assert producer.sent == [(TOPICS.steps("default"), b"t1/s1")]
        finally:
            loop.cancel()
            relaying.cancel()
            await asyncio.gather(loop, relaying, return_exceptions=True)

    run_in_virtual_time(clock, main())


def test_scheduling_a_retry_wakes_the_timer_loop_and_giving_up_does_not(engine: Engine) -> None:
    woken: list[bool] = []
    r = Recovery(
        TOPICS,
        RecoverySettings(),
        clock=lambda: NOW,
        rng=random.Random(3),
        timer_scheduled=lambda: woken.append(True),
    )
    assert isinstance(handle(engine, r, failure(1)), Retry)
    assert woken == [True]
    assert isinstance(handle(engine, r, failure(2, error_class="fatal")), Abandon)
    assert woken == [True]
