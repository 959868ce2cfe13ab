"""The consume loop with a real SQLite database and a recording consumer:
inbox dedup, outbox rows, DLQ rows and offset commits, without a broker."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiokafka import ConsumerRecord, TopicPartition
from prometheus_client import REGISTRY

from podium_contracts import Event, TaskAccepted, TaskSubmitted, encode
from podium_shared import ConsumeLoop, Handler, OutboxRelay, UnitOfWork, make_engine
from podium_shared.db import inbox, outbox
from podium_shared.dlq import dlq_headers
from podium_shared.outbox import RelayStalled
from podium_shared.settle import DEAD_LETTERED_SOURCE

pytestmark = pytest.mark.unit


@dataclass
class RecordingConsumer:
    topic: str = "t.tasks.v1"
    commits: list[dict[TopicPartition, int]] = field(default_factory=list)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(self.topic, p) for p in range(4)}

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: o.offset for tp, o in offsets.items()})


def record(
    offset: int,
    value: bytes | None,
    headers: list[tuple[str, bytes]],
    topic: str = "t.tasks.v1",
    partition: int = 0,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=value,
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=len(value or b""),
        headers=tuple(headers),
    )


def submitted(task_id: str, ce_id: str | None = None) -> tuple[bytes, list[tuple[str, bytes]]]:
    return encode(TaskSubmitted(task_id=task_id, workflow="hello"), source="test", id=ce_id)


class Relay:
    notified = 0

    def notify(self) -> None:
        self.notified += 1


def make_loop(tmp_path: Path, apply: Any) -> tuple[ConsumeLoop, RecordingConsumer, sa.Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    consumer = RecordingConsumer()
    loop = ConsumeLoop(
        consumer=consumer,
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=apply),
        group="g",
        service="svc",
    )
    return loop, consumer, engine


def accept(event: Event, _r: None, uow: UnitOfWork) -> None:
    assert isinstance(event.payload, TaskSubmitted)
    uow.publish(
        "t.task-events.v1",
        TaskAccepted(
            task_id=event.payload.task_id,
            workflow="hello",
            accepted_at=event.envelope.time,
        ),
        key=event.payload.task_id,
    )


def outbox_rows(engine: sa.Engine) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(sa.select(outbox).order_by(outbox.c.id)))


async def test_handled_messages_commit_state_outbox_and_offsets_together(tmp_path: Path) -> None:
    loop, consumer, engine = make_loop(tmp_path, accept)
    await loop.process([record(0, *submitted("a")), record(1, *submitted("b"))])
    rows = outbox_rows(engine)
    assert [r.topic for r in rows] == ["t.task-events.v1"] * 2
    assert [r.key for r in rows] == [b"a", b"b"]
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(inbox)).scalar() == 2
    assert consumer.commits == [{TopicPartition("t.tasks.v1", 0): 2}]


async def test_a_redelivered_message_is_handled_once(tmp_path: Path) -> None:
    calls: list[str] = []

    def count(event: Event, r: None, uow: UnitOfWork) -> None:
        calls.append(event.envelope.id)

    loop, consumer, _ = make_loop(tmp_path, count)
    value, headers = submitted("a", ce_id="same-id")
    await loop.process([record(0, value, headers), record(1, value, headers)])
    await loop.process([record(0, value, headers)])  # redelivery after a crash
    assert calls == ["same-id"]
    assert loop.stats.duplicates == 2
    assert consumer.commits[-1] == {TopicPartition("t.tasks.v1", 0): 1}


async def test_poison_is_dead_lettered_with_reason_and_the_batch_goes_on(tmp_path: Path) -> None:
    loop, consumer, engine = make_loop(tmp_path, accept)
    await loop.process(
        [
            record(7, b"\xff not json", [("ce_type", b"x")]),
            record(8, *submitted("good")),
        ]
    )
    rows = outbox_rows(engine)
    dlq, good = rows
    assert dlq.topic == "t.tasks.v1.dlq" and dlq.value == b"\xff not json"
    meta = dlq_headers([(k, v.encode("latin-1")) for k, v in dlq.headers])
    assert meta["reason"] == "undecodable"
    assert meta["original-offset"] == "7" and meta["original-topic"] == "t.tasks.v1"
    assert good.topic == "t.task-events.v1"
    assert consumer.commits == [{TopicPartition("t.tasks.v1", 0): 9}]


async def test_a_redelivered_poison_record_is_dead_lettered_once(tmp_path: Path) -> None:
    # The offset commit after a dead-lettering can be lost (a rebalance, a stop): the
    # redelivered record must not make a second DLQ copy.
    loop, consumer, engine = make_loop(tmp_path, accept)
    poison = record(7, b"\xff not json", [("ce_type", b"x")])
    await loop.process([poison])
    await loop.process([poison])  # redelivered: same place in the log
    assert [r.topic for r in outbox_rows(engine)] == ["t.tasks.v1.dlq"]
    assert (loop.stats.dead_lettered, loop.stats.duplicates) == (1, 1)
    assert consumer.commits[-1] == {TopicPartition("t.tasks.v1", 0): 8}


async def test_a_replayed_dead_letter_is_handled_though_its_ce_id_was_dead_lettered(
    tmp_path: Path,
) -> None:
    # A replay publishes the record again, same ce_id, at a new offset: the consumer
    # that dead-lettered it (its handler since fixed) must handle it, not drop it.
    failing = True

    def accept_once_fixed(event: Event, r: None, uow: UnitOfWork) -> None:
        if failing:
            raise RuntimeError("not yet")
        accept(event, r, uow)

    loop, _, engine = make_loop(tmp_path, accept_once_fixed)
    value, headers = submitted("a", ce_id="same-id")
    await loop.process([record(3, value, headers)])
    failing = False
    await loop.process([record(9, value, headers)])  # the replay
    assert [r.topic for r in outbox_rows(engine)] == ["t.tasks.v1.dlq", "t.task-events.v1"]
    assert (loop.stats.dead_lettered, loop.stats.handled, loop.stats.duplicates) == (1, 1, 0)


async def test_a_handler_error_rolls_back_only_its_message(tmp_path: Path) -> None:
    def flaky(event: Event, r: None, uow: UnitOfWork) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        accept(event, r, uow)
        if event.payload.task_id == "bad":
            raise ValueError("boom")

    loop, _, engine = make_loop(tmp_path, flaky)
    await loop.process([record(0, *submitted("bad")), record(1, *submitted("ok"))])
    rows = outbox_rows(engine)
    assert [r.topic for r in rows] == ["t.tasks.v1.dlq", "t.task-events.v1"]
    meta = dlq_headers([(k, v.encode("latin-1")) for k, v in rows[0].headers])
    assert meta["reason"] == "processing_error" and meta["error-message"] == "boom"
    with engine.connect() as c:  # the failed message's inbox record was rolled back with it
        sources = [r.source for r in c.execute(sa.select(inbox.c.source))]
    # ...and its place in the log noted instead, so a redelivery is not dead-lettered twice
    assert sorted(sources) == [f"{DEAD_LETTERED_SOURCE}:t.tasks.v1", "test"]


async def test_offsets_of_revoked_partitions_are_not_committed(tmp_path: Path) -> None:
    loop, consumer, _ = make_loop(tmp_path, accept)
    await loop.process([record(0, *submitted("a"), topic="other", partition=0)])
    assert consumer.commits == []


@dataclass
class RecordingProducer:
    sent: list[tuple[str, bytes | None]] = field(default_factory=list)
    fail: bool = False

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None
    ) -> Any:
        import asyncio

        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            fut.set_exception(ConnectionError("broker away"))
        else:
            self.sent.append((topic, key))
            fut.set_result(None)
        return fut


async def test_relay_publishes_in_order_and_keeps_rows_it_could_not_send(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    with engine.begin() as conn:
        uow = UnitOfWork(conn, source="test")
        for i in range(3):
            uow.publish("t.x", TaskSubmitted(task_id=f"t{i}", workflow="w"), key=f"t{i}")
        uow.flush()
    failing = RecordingProducer(fail=True)
    with pytest.raises(RelayStalled):  # a broker away is not the rows' fault: none parked
        await OutboxRelay(engine, failing).publish_pending()
    assert len(outbox_rows(engine)) == 3  # nothing lost: the sweep sends them later
    producer = RecordingProducer()
    assert await OutboxRelay(engine, producer).publish_pending() == 3
    assert producer.sent == [("t.x", b"t0"), ("t.x", b"t1"), ("t.x", b"t2")]
    assert outbox_rows(engine) == []


def test_the_inbox_takes_a_message_once_and_says_so(tmp_path: Path) -> None:
    from podium_shared.outbox import record_received

    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    with engine.begin() as conn:
        assert record_received(conn, "g", ("s", "m1"), "t") is True
        assert record_received(conn, "g", ("s", "m1"), "t") is False  # a concurrent duplicate
        assert record_received(conn, "other-group", ("s", "m1"), "t") is True
        assert record_received(conn, "g", ("another-system", "m1"), "t") is True
    engine.dispose()


def duplicates_counted(topic: str = "t.tasks.v1") -> float:
    value = REGISTRY.get_sample_value(
        "podium_messages_duplicate_total", {"service": "svc", "topic": topic}
    )
    return value or 0.0


async def test_one_id_from_two_sources_is_two_messages_and_a_repeat_is_counted(
    tmp_path: Path,
) -> None:
    # Two upstream systems that both number their events: the same ce_id, two tasks.
    loop, _, engine = make_loop(tmp_path, accept)
    billing = encode(TaskSubmitted(task_id="ta", workflow="hello"), source="billing", id="1")
    crm = encode(TaskSubmitted(task_id="tb", workflow="hello"), source="crm", id="1")
    before = duplicates_counted()
    await loop.process([record(0, *billing), record(1, *crm)])
    assert [r.key for r in outbox_rows(engine)] == [b"ta", b"tb"]
    assert loop.stats.handled == 2 and loop.stats.duplicates == 0
    await loop.process([record(2, *crm), record(3, *crm)])  # redelivered, twice in a batch
    assert len(outbox_rows(engine)) == 2
    assert loop.stats.duplicates == 2
    assert duplicates_counted() == before + 2


def test_an_inbox_row_from_before_sources_stands_for_its_id_from_any_source(
    tmp_path: Path,
) -> None:
    from podium_shared.outbox import LEGACY_SOURCE, seen_before

    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    with engine.begin() as conn:
        for message_id, source in (("old", LEGACY_SOURCE), ("new", "crm")):
            conn.execute(
                inbox.insert().values(
                    consumer="g", message_id=message_id, source=source, topic="t", received_at=0.0
                )
            )
        asked = [("billing", "old"), ("crm", "new"), ("billing", "new"), ("crm", "other")]
        assert seen_before(conn, "g", asked) == {("billing", "old"), ("crm", "new")}
        assert seen_before(conn, "another-group", asked) == set()
    engine.dispose()


def test_make_engine_is_safe_to_call_again_on_the_same_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'svc.db'}"
    first, second = make_engine(url), make_engine(url)
    with second.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar() == 0
    first.dispose()
    second.dispose()


async def test_a_clean_batch_is_written_in_two_statements_whatever_its_size(
    tmp_path: Path,
) -> None:
    # One inbox insert and one outbox insert per fetched batch, no savepoints.
    loop, consumer, engine = make_loop(tmp_path, accept)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    await loop.process([record(i, *submitted(f"t{i}")) for i in range(5)])
    writes = [s.split()[0] for s in statements if not s.startswith("SELECT")]
    assert writes == ["INSERT", "INSERT"] and len(outbox_rows(engine)) == 5
    assert loop.stats.handled == 5
    assert consumer.commits == [{TopicPartition("t.tasks.v1", 0): 5}]


async def test_a_message_recorded_meanwhile_is_skipped_and_the_rest_written(
    tmp_path: Path,
) -> None:
    engine_box: list[sa.Engine] = []

    async def another_member_takes_b(event: Event) -> None:
        # Between this member's inbox check and its write, another member (during a
        # rebalance) records "b": the batch write is refused and redone one by one.
        if event.envelope.id == "b":
            with engine_box[0].begin() as c:
                c.execute(
                    inbox.insert().values(
                        consumer="g", message_id="b", source="test", topic="x", received_at=0.0
                    )
                )

    loop, _, engine = make_loop(tmp_path, accept)
    engine_box.append(engine)
    loop._settler.handler = Handler(apply=accept, execute=another_member_takes_b)
    await loop.process(
        [record(n, *submitted(f"t{i}", ce_id=i)) for n, i in enumerate(("a", "b", "c"))]
    )
    assert [r.key for r in outbox_rows(engine)] == [b"ta", b"tc"]
    assert loop.stats.handled == 2 and loop.stats.duplicates == 1


def test_insert_ignore_refuses_a_database_it_cannot_ignore_duplicates_on() -> None:
    from podium_shared.db import insert_ignore_statement

    with pytest.raises(NotImplementedError, match="SQLite or PostgreSQL, not mysql"):
        insert_ignore_statement("mysql", inbox)


async def test_events_the_handler_does_not_want_are_committed_without_inbox_or_apply(
    tmp_path: Path,
) -> None:
    calls: list[str] = []

    def count(event: Event, r: None, uow: UnitOfWork) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        calls.append(event.payload.task_id)

    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    consumer = RecordingConsumer()
    loop = ConsumeLoop(
        consumer=consumer,  # type: ignore[arg-type]
        engine=engine,
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(
            apply=count,
            wants=lambda e: isinstance(e.payload, TaskSubmitted) and e.payload.task_id != "skip",
        ),
        group="g",
        service="svc",
    )
    await loop.process(
        [record(0, *submitted("a")), record(1, *submitted("skip")), record(2, b"{not json", [])]
    )
    assert calls == ["a"]
    with engine.connect() as c:
        # "a", and the dead-lettered record's place in the log: none for "skip".
        assert c.execute(sa.select(sa.func.count()).select_from(inbox)).scalar() == 2
    # The undecodable record is not "unwanted": it is dead-lettered, as before.
    assert [r.topic for r in outbox_rows(engine)] == ["t.tasks.v1.dlq"]
    assert loop.stats.passed_over == 1 and loop.stats.handled == 1
    assert consumer.commits == [{TopicPartition("t.tasks.v1", 0): 3}]


async def test_the_relay_is_woken_only_by_a_batch_that_wrote(tmp_path: Path) -> None:
    relay = Relay()
    engine = make_engine(f"sqlite:///{tmp_path / 'svc.db'}")
    loop = ConsumeLoop(
        consumer=RecordingConsumer(),  # type: ignore[arg-type]
        engine=engine,
        relay=relay,  # type: ignore[arg-type]
        handler=Handler(apply=accept, wants=lambda e: e.payload.task_id != "skip"),  # type: ignore[attr-defined]
        group="g",
        service="svc",
    )
    await loop.process([record(0, *submitted("a", ce_id="a"))])
    assert relay.notified == 1
    await loop.process([record(1, *submitted("a", ce_id="a")), record(2, *submitted("skip"))])
    assert relay.notified == 1  # a duplicate and a passed-over event: nothing to send
    await loop.process([record(3, b"{not json", [])])
    assert relay.notified == 2  # a dead letter is an outbox row


async def test_only_batches_that_wrote_keep_the_consumer_off_its_idle_wait(
    tmp_path: Path,
) -> None:
    from podium_shared.idle import IdleBackoff, IdlePolicy

    now = [0.0]
    applied: list[int] = []
    tp = TopicPartition("t.tasks.v1", 0)
    script = [
        [record(0, *submitted("a"))],  # handled at t=0
        [record(1, *submitted("skip"))],  # passed over at t=2: idle since 0, backs off
        [record(2, *submitted("b"))],  # handled at t=4: back to the floor
    ]

    class Scripted(RecordingConsumer):
        async def getmany(self, timeout_ms: int = 0) -> dict[TopicPartition, Any]:
            if not script:
                raise asyncio.CancelledError
            now[0] = 2.0 * (3 - len(script))  # the batches come at t = 0, 2 and 4 s
            return {tp: script.pop(0)}

    consumer = Scripted()
    backoff = IdleBackoff(
        consumer,
        IdlePolicy(floor_ms=5, ceiling_ms=250),
        clock=lambda: now[0],
        apply=lambda c, ms: applied.append(ms) or True,
    )
    loop = ConsumeLoop(
        consumer=consumer,  # type: ignore[arg-type]
        engine=make_engine(f"sqlite:///{tmp_path / 'svc.db'}"),
        relay=Relay(),  # type: ignore[arg-type]
        handler=Handler(apply=accept, wants=lambda e: e.payload.task_id != "skip"),  # type: ignore[attr-defined]
        group="g",
        service="svc",
        idle=backoff,
    )
    with pytest.raises(asyncio.CancelledError):
        await loop.run()
    # Two seconds since the last write (the passed-over batch does not count): 160 ms;
    # the next handled batch puts it back to 5 ms.
    assert applied == [160, 5]


async def test_a_handler_taking_the_batch_at_once_gets_it_and_a_failed_one_goes_one_by_one(
    tmp_path: Path,
) -> None:
    """``apply_all`` takes a clean batch in one call; when it fails, the batch is written
    message by message through ``apply``, which isolates the message at fault."""
    batches: list[list[str]] = []
    singles: list[str] = []

    def apply_all(conn: sa.Connection, events: list[Event]) -> None:
        batches.append([e.envelope.id for e in events])
        if any(isinstance(e.payload, TaskSubmitted) and e.payload.task_id == "bad" for e in events):
            raise ValueError("boom")

    def apply(event: Event, r: None, uow: UnitOfWork) -> None:
        assert isinstance(event.payload, TaskSubmitted)
        singles.append(event.envelope.id)
        if event.payload.task_id == "bad":
            raise ValueError("boom")

    loop, consumer, engine = make_loop(tmp_path, apply)
    loop._settler.handler = Handler(apply=apply, apply_all=apply_all)
    await loop.process([record(0, *submitted("a", "1")), record(1, *submitted("b", "2"))])
    assert batches == [["1", "2"]] and singles == []
    await loop.process([record(2, *submitted("bad", "3")), record(3, *submitted("c", "4"))])
    assert batches[1] == ["3", "4"] and singles == ["3", "4"]
    assert [r.topic for r in outbox_rows(engine)] == ["t.tasks.v1.dlq"]
    assert loop.stats.handled == 3 and loop.stats.dead_lettered == 1
    assert consumer.commits[-1] == {TopicPartition("t.tasks.v1", 0): 4}


async def test_a_handler_asking_the_inbox_at_write_applies_only_what_it_had_not_seen(
    tmp_path: Path,
) -> None:
    """``inbox_at_write``: no read before the batch's transaction; its inbox insert skips
    the messages recorded before (a redelivery), which are counted as duplicates."""
    batches: list[list[str]] = []

    def apply_all(conn: sa.Connection, events: list[Event]) -> None:
        batches.append([e.envelope.id for e in events])

    def apply(event: Event, r: None, uow: UnitOfWork) -> None:
        raise AssertionError("a clean batch goes to apply_all")

    loop, consumer, engine = make_loop(tmp_path, apply)
    loop._settler.handler = Handler(apply=apply, apply_all=apply_all, inbox_at_write=True)
    transactions: list[str] = []
    sa.event.listen(engine, "begin", lambda *a: transactions.append("begin"))
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    await loop.process([record(0, *submitted("a", "1")), record(1, *submitted("b", "2"))])
    assert batches == [["1", "2"]] and transactions == ["begin"]
    assert [s.split()[0] for s in statements] == ["INSERT"]  # no SELECT of the inbox
    # Redelivered after a lost offset commit, with a new one behind them; and again, all seen.
    again = [("a", "1"), ("b", "2"), ("c", "3")]
    await loop.process([record(n, *submitted(t, i)) for n, (t, i) in enumerate(again)])
    await loop.process([record(0, *submitted("a", "1"))])
    assert batches == [["1", "2"], ["3"]]
    assert loop.stats.handled == 3 and loop.stats.duplicates == 3
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(inbox)).scalar() == 3
    assert consumer.commits[-1] == {TopicPartition("t.tasks.v1", 0): 1}


def test_inbox_at_write_needs_a_handler_taking_the_batch_and_reading_nothing_ahead() -> None:
    def apply(event: Event, r: None, uow: UnitOfWork) -> None: ...

    def apply_all(conn: sa.Connection, events: list[Event]) -> None: ...

    with pytest.raises(ValueError, match="inbox_at_write"):
        Handler(apply=apply, inbox_at_write=True)
    with pytest.raises(ValueError, match="inbox_at_write"):
        Handler(apply=apply, apply_all=apply_all, prepare=lambda c, e: None, inbox_at_write=True)
    assert Handler(apply=apply, apply_all=apply_all, inbox_at_write=True).inbox_at_write
