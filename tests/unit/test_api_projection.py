"""The api's projection: each event's effect on runs and steps, order-free across
topics, idempotent through the inbox, and the same when rebuilt."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import ConsumerRecord, TopicPartition
from sqlalchemy.engine import Engine

from podium_api import projection
from podium_api.bootstrap import consumer_group, database_epoch
from podium_api.handlers import PROJECTIONS, apply, apply_all, make_handler
from podium_api.migrations import HISTORY
from podium_api.state import dead_letter_events, history, runs, steps
from podium_contracts import (
    ALL_CONTRACTS,
    DlqLocation,
    Envelope,
    Event,
    StepAbandoned,
    StepCompleted,
    StepError,
    StepFailed,
    StepRequested,
    StepRetryScheduled,
    StepSummary,
    TaskAccepted,
    TaskCancelRequested,
    TaskCompleted,
    TaskError,
    TaskFailed,
    TaskHistoryRecorded,
    TaskSubmitted,
    encode,
)
from podium_shared import ConsumeLoop, Topics, UnitOfWork
from podium_shared.migrations import open_database

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """On SQLite and PostgreSQL (the permutations below on SQLite files of their own)."""
    e = open_database(database_url, HISTORY)
    yield e
    e.dispose()


def event(payload: Any, seconds: float) -> Event:
    return Event(
        Envelope(id=f"id-{id(payload)}", type="x", source="test", time=at(seconds)), payload
    )


def project(engine: Engine, events: list[Event]) -> None:
    with engine.begin() as conn:
        for e in events:
            apply(e, None, UnitOfWork(conn, source="test"))


def snapshot(engine: Engine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with engine.connect() as conn:
        r = [dict(x) for x in conn.execute(sa.select(runs).order_by(runs.c.task_id)).mappings()]
        s = [
            dict(x)
            for x in conn.execute(
                sa.select(steps).order_by(steps.c.task_id, steps.c.step_id)
            ).mappings()
        ]
    for row in r:
        row.pop("updated_at")
    for row in s:
        row.pop("updated_at")
    return r, s


def request(step: str, attempt: int) -> StepRequested:
    return StepRequested(
        task_id="t1",
        step_id=step,
        workflow="wf",
        capability="echo",
        pool="default",
        attempt=attempt,
        idempotency_key=f"t1:{step}",
        tenant="acme",
    )


def story() -> list[Event]:
    """A task whose step fails once, is retried and completes; the task completes."""
    err = StepError(type="unavailable", message="down", error_class="retryable")
    return [
        event(TaskSubmitted(task_id="t1", workflow="wf", tenant="acme", subject="s1"), 0),
        event(TaskAccepted(task_id="t1", workflow="wf", accepted_at=at(1)), 1),
        event(
            StepFailed(
                task_id="t1",
                step_id="a",
                capability="echo",
                pool="default",
                attempt=1,
                error=err,
                duration_ms=5,
                request=request("a", 1),
            ),
            2,
        ),
        event(
            StepRetryScheduled(
                task_id="t1", step_id="a", attempt=2, pool="default", due_at=at(3), error=err
            ),
            2.5,
        ),
        event(
            StepCompleted(
                task_id="t1",
                step_id="a",
                capability="echo",
                pool="default",
                output={"x": 1},
                attempt=2,
                duration_ms=7,
            ),
            4,
        ),
        event(
            TaskCompleted(
                task_id="t1",
                workflow="wf",
                output={"done": True},
                steps=[
                    StepSummary(
                        step_id="a", capability="echo", pool="default", attempts=2, duration_ms=12
                    )
                ],
                accepted_at=at(1),
                completed_at=at(5),
                tenant="acme",
                subject="s1",
            ),
            5,
        ),
    ]


def test_a_run_and_its_steps_are_projected(engine: Engine) -> None:
    project(engine, story())
    (run,), (step,) = snapshot(engine)
    assert run["status"] == "completed"
    assert (run["tenant"], run["workflow"], run["subject"]) == ("acme", "wf", "s1")
    assert run["created_at"] == at(0).timestamp()
    assert run["finished_at"] == at(5).timestamp()
    assert run["output"] == {"value": {"done": True}}
    assert step["status"] == "completed"
    assert step["attempts"] == 2
    assert step["duration_ms"] == 7
    assert step["total_duration_ms"] == 12
    assert step["output"] == {"value": {"x": 1}}


def test_order_across_topics_does_not_change_the_result(engine: Engine, tmp_path: Path) -> None:
    """Events of different topics may arrive in any order; per topic they keep theirs."""
    events = story()
    project(engine, events)
    expected = snapshot(engine)
    # Topics: tasks (0), task-events (1, 5), step-failures (2), step-results (3, 4).
    lanes = [[events[0]], [events[1], events[5]], [events[2]], [events[3], events[4]]]
    seen = 0
    for order in itertools.permutations(range(4)):
        other = open_database(f"sqlite:///{tmp_path / f'o{seen}.db'}", HISTORY)
        project(other, [e for lane in order for e in lanes[lane]])
        assert snapshot(other) == expected, order
        other.dispose()
        seen += 1
    assert seen == 24


def test_a_status_only_moves_forward_but_a_later_outcome_replaces_one() -> None:
    assert projection.advances(None, "accepted")
    assert not projection.advances("accepted", "submitted")
    assert not projection.advances("completed", "accepted")
    assert projection.advances("failed", "completed")  # a replayed dead letter


def test_a_failed_task_then_completed_after_replay_ends_completed(engine: Engine) -> None:
    failed = TaskFailed(
        task_id="t1",
        workflow="wf",
        error=TaskError(type="unavailable", message="down", step_id="a"),
        dlq=DlqLocation(topic="p.steps.default.v1.dlq", record_id="r1"),
        failed_at=at(3),
        tenant="acme",
    )
    abandoned = StepAbandoned(
        task_id="t1",
        step_id="a",
        attempts=3,
        error=StepError(type="unavailable", message="down"),
    )
    events = story()
    project(engine, [events[0], events[1], event(abandoned, 2.9), event(failed, 3)])
    assert snapshot(engine)[0][0]["status"] == "failed"
    assert snapshot(engine)[1][0]["status"] == "abandoned"
    project(engine, [events[5]])
    (run,), _ = snapshot(engine)
    assert run["status"] == "completed"


def test_every_contract_of_the_topics_it_reads_has_a_projection() -> None:
    topics = Topics("p")
    read = set()
    for topic in (topics.tasks, topics.task_events, topics.step_results, topics.step_failures):
        read |= set(topics.carries(topic))
    projected = {c.CE_TYPE for c in PROJECTIONS}
    assert read == projected
    assert projected <= {c.CE_TYPE for c in ALL_CONTRACTS}


def test_a_new_database_is_a_new_consumer_group(tmp_path: Path) -> None:
    """Dropping the database rebuilds the projection: the new group reads from the start."""
    url = f"sqlite:///{tmp_path / 'api.db'}"
    first = open_database(url, HISTORY)
    epoch = database_epoch(first)
    assert database_epoch(first) == epoch  # stable for the database's life
    first.dispose()
    (tmp_path / "api.db").unlink()
    second = open_database(url, HISTORY)
    assert database_epoch(second) != epoch
    assert consumer_group(Topics("p"), epoch) == f"p-api-{epoch}"
    second.dispose()


def many_stories() -> list[Event]:
    """Three tasks' stories interleaved, with history entries, a dead letter told twice
    (a rebuilt projection's second copy) and a task failed then completed by a replay."""
    out: list[Event] = []
    for n in range(3):
        for e in story():
            payload = e.payload.model_copy(update={"task_id": f"t{n}"})
            if isinstance(payload, TaskCompleted):
                payload = payload.model_copy(update={"tenant": f"tenant-{n}"})
            out.append(event(payload, e.envelope.time.timestamp() - T0.timestamp() + n))
    dlq = DlqLocation(topic="p.steps.default.v1.dlq", record_id="r1")
    abandoned = StepAbandoned(
        task_id="t1", step_id="b", attempts=3, error=StepError(type="x", message="y"), dlq=dlq
    )
    failed = TaskFailed(
        task_id="t1",
        workflow="wf",
        error=TaskError(type="x", message="y", step_id="b"),
        dlq=dlq,
        failed_at=at(6),
        tenant="tenant-1",
    )
    out[4:4] = [event(abandoned, 5.5), event(failed, 6), event(abandoned, 6.5)]
    for i in range(0, len(out), 3):
        task = out[i].payload.task_id
        entry = TaskHistoryRecorded(task_id=task, at=at(i), kind="accepted", cause=f"c{i}")
        out.insert(i, event(entry, i))
    return out


def everything(engine: Engine) -> list[list[dict[str, Any]]]:
    """Every table the projection writes; change numbers as their order (a batch may
    leave gaps where a run changed twice in it)."""
    with engine.connect() as conn:
        tables = [
            [dict(x) for x in conn.execute(sa.select(t).order_by(*t.primary_key)).mappings()]
            for t in (runs, steps, history, dead_letter_events)
        ]
    for rows in (tables[0], tables[3]):
        order = sorted(r["seq"] for r in tables[0] + tables[3])
        for r in rows:
            r["seq"] = order.index(r["seq"])
    return tables


@pytest.mark.parametrize("size", [1, 2, 5, 100])
def test_a_batch_applied_at_once_writes_what_its_events_one_by_one_write(
    engine: Engine, tmp_path: Path, size: int
) -> None:
    events = many_stories()
    one_by_one = open_database(f"sqlite:///{tmp_path / 'one.db'}", HISTORY)
    project(one_by_one, events)
    expected = everything(one_by_one)
    one_by_one.dispose()
    assert len(expected[2]) > 3 and len(expected[3]) == 1  # the story has them all
    for start in range(0, len(events), size):
        with engine.begin() as conn:
            apply_all(conn, events[start : start + size])
    assert everything(engine) == expected


def test_a_batch_reads_and_writes_in_a_few_statements(engine: Engine) -> None:
    """About three statements per event before; now a handful per batch, however long."""
    events = many_stories()
    statements: list[str] = []

    def counted(*args: Any) -> None:
        statements.append(str(args[2]))

    sa.event.listen(engine, "before_cursor_execute", counted)
    try:
        with engine.begin() as conn:
            apply_all(conn, events)
    finally:
        sa.event.remove(engine, "before_cursor_execute", counted)
    # the hold on the change numbers; runs, steps, history's last entries, dead letters;
    # the change numbers; inserts of runs, steps, history and dead letters; no updates
    # (every row is new here).
    assert len(events) > 25 and len(statements) <= 10, statements


class Consumer:
    """Enough of a consumer for ``ConsumeLoop.process``: every partition is ours."""

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(t, 0) for t in ("p.tasks.v1", "p.task-events.v1")}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        pass


class Relay:
    def notify(self) -> None:
        pass


def records(events: list[tuple[str, Any]]) -> list[ConsumerRecord[bytes, bytes]]:
    out = []
    for offset, (topic, payload) in enumerate(events):
        value, headers = encode(payload, source="test", time=at(offset))
        out.append(
            ConsumerRecord(
                topic=topic,
                partition=0,
                offset=offset,
                timestamp=0,
                timestamp_type=0,
                key=payload.task_id.encode(),
                value=value,
                checksum=None,
                serialized_key_size=len(payload.task_id),
                serialized_value_size=len(value),
                headers=tuple(headers),
            )
        )
    return out


def hello_tasks(first: int, count: int) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """``count`` tasks of one step, eight events each, as two batches: how each task
    began (new runs and steps), then how it ended (changes to them)."""
    began: list[tuple[str, Any]] = []
    ended: list[tuple[str, Any]] = []
    err = StepError(type="unavailable", message="down", error_class="retryable")
    summary = StepSummary(step_id="a", capability="echo", pool="default", attempts=2, duration_ms=3)
    for n in range(first, first + count):
        t, ev = f"task-{n}", "p.task-events.v1"
        began += [
            ("p.tasks.v1", TaskSubmitted(task_id=t, workflow="hello", tenant="acme")),
            (ev, TaskHistoryRecorded(task_id=t, at=at(n), kind="accepted")),
            (ev, TaskAccepted(task_id=t, workflow="hello", accepted_at=at(n))),
            (
                ev,
                StepRetryScheduled(
                    task_id=t, step_id="a", attempt=2, pool="default", due_at=at(n), error=err
                ),
            ),
        ]
        completed = StepCompleted(
            task_id=t,
            step_id="a",
            capability="echo",
            pool="default",
            output={"x": 1},
            attempt=2,
            duration_ms=3,
        )
        ended += [
            (ev, completed),
            (ev, TaskHistoryRecorded(task_id=t, at=at(n), kind="step_completed", step_id="a")),
            (ev, TaskHistoryRecorded(task_id=t, at=at(n), kind="completed")),
            (
                ev,
                TaskCompleted(
                    task_id=t,
                    workflow="hello",
                    output={"done": True},
                    steps=[summary],
                    accepted_at=at(n),
                    completed_at=at(n + 1),
                ),
            ),
        ]
    return began, ended


async def test_a_batch_costs_the_same_round_trips_to_the_database_whatever_its_size(
    engine: Engine,
) -> None:
    """What bounds the projection on PostgreSQL is its round trips per fetched batch, so a
    batch of 400 events makes as many as a batch of 4 (a dozen, where it made 18: the
    inbox is asked in the batch's transaction, rows are upserted)."""
    loop = ConsumeLoop(
        consumer=Consumer(),  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=make_handler(),
        group="g",
        service="api",
    )
    trips: list[str] = []

    def count(name: str) -> Callable[..., None]:
        return lambda *_: trips.append(name)

    # Each statement, BEGIN, COMMIT and ROLLBACK is one; a checkout is a ping (pre_ping).
    for name in ("before_cursor_execute", "begin", "commit", "rollback"):
        sa.event.listen(engine, name, count(name))
    sa.event.listen(engine.pool, "checkout", count("checkout"))
    per_batch: dict[int, list[int]] = {}
    sent: list[list[ConsumerRecord[bytes, bytes]]] = []
    for first, tasks in ((0, 1), (1, 50)):
        for batch in hello_tasks(first, tasks):
            trips.clear()
            sent.append(records(batch))
            await loop.process(sent[-1])
            per_batch.setdefault(len(batch), []).append(len(trips))
    assert loop.stats.handled == 8 * 51
    assert per_batch[4] == per_batch[200], per_batch
    assert max(per_batch[200]) <= 12, trips
    written, written_steps = snapshot(engine)
    # A batch redelivered (its offsets' commit lost) is told apart by the inbox insert:
    # its events are duplicates, and nothing changes.
    await loop.process(sent[1] + sent[0])
    assert loop.stats.handled == 8 * 51 and loop.stats.duplicates == 8
    assert snapshot(engine) == (written, written_steps)
    assert [r["status"] for r in written] == ["completed"] * 51
    assert all(s["status"] == "completed" and s["attempts"] == 2 for s in written_steps)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(history)).scalar() == 3 * 51


def test_a_second_replica_projects_after_the_first_commits_not_over_it(
    postgres_url: str,
) -> None:
    """Two api replicas sharing one PostgreSQL database, each with a batch of one run:
    the second waits for the first's commit and merges into what it wrote (its
    acceptance), rather than into the run as it read it before (a lost acceptance)."""
    engine = open_database(postgres_url, HISTORY)
    accepted = event(TaskAccepted(task_id="t1", workflow="wf", accepted_at=at(1)), 1)
    cancel = event(TaskCancelRequested(task_id="t1"), 2)
    waiting: list[str] = []

    def replica_b() -> None:
        with engine.begin() as conn:
            apply_all(conn, [cancel])
        waiting.append("done")

    other = threading.Thread(target=replica_b)
    try:
        with engine.begin() as conn:
            apply_all(conn, [story()[0]])  # submitted
        with engine.begin() as conn:
            apply_all(conn, [accepted])
            other.start()
            # Autocommit: a transaction sees pg_stat_activity as its first look found it.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch:
                deadline = time.monotonic() + 10
                while not blocked(watch):
                    assert time.monotonic() < deadline, "replica b never waited"
                    time.sleep(0.02)  # polling the server's view of the wait, not a guess
            assert waiting == []
        other.join(10)
        assert waiting == ["done"]
        (run,), _ = snapshot(engine)
        assert run["status"] == "accepted" and run["accepted_at"] == at(1).timestamp()
        assert run["cancel_requested_at"] == at(2).timestamp()
    finally:
        if other.is_alive():
            other.join(10)  # before its tables go
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()


def blocked(conn: sa.Connection) -> bool:
    """Whether another session of this database waits for a lock."""
    waits = conn.execute(
        sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
    )
    return bool(waits.scalar_one())
