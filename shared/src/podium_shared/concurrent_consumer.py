"""A consume loop with up to N messages executing, beyond the partition count.

``ConsumeLoop`` handles one fetched batch at a time, so one slow message holds
back the whole batch. This loop starts a task per message as soon as a slot is
free, and commits each partition's offset only up to the last message that is
fully finished *and every message before it* (the contiguous commit point):

    partition 3:  10 ✔  11 ✔  12 …  13 ✔  14 …      → commits 12
    (a crash now redelivers 12, 13 and 14; the inbox skips 13)

The pieces are those of ``ConsumeLoop``: decode, inbox dedup, the handler's
``execute`` outside any transaction and ``apply`` inside one with the outbox,
and dead-lettering. Finished messages are written by one writer task, many per
transaction, one savepoint each.

A slot is the ``execute`` phase: a message frees its slot as soon as its call
returns, not when the writer has committed it, so N calls stay busy while the
writer catches up (up to N more finished messages may wait for it). Holding
the slot through the write would leave every slot idle for a write's latency.

On revocation (``ReleaseOnRevoke``) and shutdown the messages of the lost
partitions get a bounded wait to finish; whatever is still running then is
cancelled and its offset is not committed, so the next owner runs it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy.engine import Connection, Engine

from podium_contracts import ContractError, Event
from podium_shared import telemetry
from podium_shared.consumer import (
    Fresh,
    Handler,
    LoopStats,
    RecordDecoder,
    Refusal,
    apply_batch,
    dead_letter_record,
    describe,
    note_duplicate,
    prepare_quietly,
    seen_each,
    start_span,
    tell_refused,
    unavailable,
)
from podium_shared.dlq import DlqReason
from podium_shared.outbox import OutboxRelay, UnitOfWork, message_id, record_received

log = structlog.get_logger(__name__)


class PartitionOffsets:
    """The offsets of one partition in flight, in fetch order."""

    def __init__(self) -> None:
        self._open: deque[int] = deque()
        self._finished: set[int] = set()
        self._point: int | None = None
        self.committed: int | None = None  # the last offset we committed (next to read)

    def started(self, offset: int) -> None:
        self._open.append(offset)

    def finished(self, offset: int) -> None:
        self._finished.add(offset)

    def commit_point(self) -> int | None:
        """The offset to commit: one past the last finished offset with none open before it."""
        while self._open and self._open[0] in self._finished:
            offset = self._open.popleft()
            self._finished.discard(offset)
            self._point = offset + 1
        return self._point

    @property
    def in_flight(self) -> int:
        return len(self._open)


def _new_future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


@dataclass(eq=False, slots=True)
class _Message:
    record: ConsumerRecord[bytes, bytes]
    tp: TopicPartition
    offsets: PartitionOffsets
    event: Event | None = None
    poison: ContractError | None = None
    result: Any = None
    failure: BaseException | None = None
    written: asyncio.Future[None] = field(default_factory=_new_future)
    span: Any = None  # its `process <topic>` span, ended once written


class ConcurrentConsumeLoop:
    """Runs one consumer group member with up to ``concurrency`` messages in flight."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        engine: Engine,
        relay: OutboxRelay,
        handler: Handler[Any],
        group: str,
        service: str,
        concurrency: int,
        poll_timeout_ms: int = 100,
        release_timeout_s: float = 10.0,
        carries: Callable[[str], Collection[str]] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._consumer = consumer
        self._engine = engine
        self._relay = relay
        self._handler = handler
        self._group = group
        self._service = service
        self._concurrency = concurrency
        self._poll_timeout_ms = poll_timeout_ms
        self.release_timeout_s = release_timeout_s
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: dict[asyncio.Task[None], _Message] = {}
        self._executing = 0
        # Fetched, deduplicated and waiting for a slot: up to one more round of slots,
        # so a freed slot starts its next message without a fetch round trip.
        self._ready: deque[_Message] = deque()
        self._ids_in_flight: set[tuple[str, str]] = set()
        self._to_write: list[_Message] = []
        self._write_wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._commit_wake = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._decode = RecordDecoder(carries)
        self.stats = LoopStats()

    @property
    def in_flight(self) -> int:
        """Messages started and not yet written (executing or waiting for the writer)."""
        return len(self._tasks)

    def _free_slots(self) -> int:
        # Executing calls are bounded by the concurrency; finished messages waiting
        # for the writer by as many again, so a stalled database stops the fetching.
        return min(self._concurrency - self._executing, 2 * self._concurrency - len(self._tasks))

    async def run(self) -> None:
        """Fetch and start messages until cancelled or ``shutdown`` is called."""
        # Writing and committing offsets run beside fetching, and apart from each
        # other: a slow offset commit never holds back the next write (or slot).
        self._background = [
            asyncio.create_task(self._write_loop(), name="consume-writer"),
            asyncio.create_task(self._commit_loop(), name="consume-committer"),
        ]
        try:
            while not self._stopping:
                self._start_ready()
                room = self._concurrency - len(self._ready)
                if room > 0:
                    if self._consumer.paused():
                        self._consumer.resume(*self._consumer.paused())
                    # With messages waiting for a slot, only take what has arrived.
                    timeout_ms = 0 if self._ready else self._poll_timeout_ms
                    batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=room)
                    records = [r for recs in batches.values() for r in recs]
                    if records and not self._stopping:
                        self._take(records)
                        continue
                if self._ready or self._free_slots() <= 0:
                    await self._wait_for_slot()
        except asyncio.CancelledError:
            for t in self._background:
                t.cancel()
            raise
        # After shutdown() the writer keeps going until what is in flight is written.

    async def _wait_for_slot(self) -> None:
        # Paused partitions keep the group membership alive (aiokafka leaves the
        # group when getmany is not called within max_poll_interval_ms) without
        # taking more records than we have slots for.
        self._slot_freed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slot_freed.wait(), 1.0)
        if self._free_slots() <= 0:
            self._consumer.pause(*self._consumer.assignment())
            await self._consumer.getmany(timeout_ms=0)

    def _take(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Decode a fetched batch, drop what the inbox has seen, queue the rest."""
        messages: list[_Message] = []
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets = self._offsets.setdefault(tp, PartitionOffsets())
            offsets.started(r.offset)
            m = _Message(r, tp, offsets)
            try:
                m.event = self._decode(r)
            except ContractError as exc:
                m.poison = exc
            except Exception as exc:  # a fault of ours, not the message's: replayable
                m.failure = exc
            messages.append(m)
        ids = [message_id(m.event.envelope) for m in messages if m.event is not None]
        with self._engine.connect() as conn:
            done, unreadable = seen_each(conn, self._group, ids)
            for m in messages:
                if m.event is not None and message_id(m.event.envelope) in unreadable:
                    m.failure = unreadable[message_id(m.event.envelope)]
                    m.event = None
            events = [m.event for m in messages if m.event is not None]
            prepare_quietly(
                conn, self._handler, [e for e in events if message_id(e.envelope) not in done]
            )
        for m in messages:
            if m.event is not None:
                ce_id = message_id(m.event.envelope)
                if ce_id in done or ce_id in self._ids_in_flight:
                    self.stats.duplicates += 1
                    note_duplicate(self._service, m.record.topic, m.event.envelope)
                    m.offsets.finished(m.record.offset)
                    continue
                self._ids_in_flight.add(ce_id)
            self._ready.append(m)
        self._commit_wake.set()  # duplicates may have moved a commit point
        self._start_ready()

    def _start_ready(self) -> None:
        """Start queued messages, in fetch order, while slots are free."""
        for _ in range(min(len(self._ready), self._free_slots())):
            m = self._ready.popleft()
            m.span = start_span(m.record, m.event, group=self._group, service=self._service)
            self._executing += 1
            task = asyncio.create_task(self._handle(m), name=f"message-{m.tp.partition}")
            self._tasks[task] = m
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        m = self._tasks.pop(task)
        if task.cancelled():  # released: not committed, the next owner runs it again
            telemetry.end(m.span, "released")
        if m.event is not None:
            self._ids_in_flight.discard(message_id(m.event.envelope))
        self._slot_freed.set()

    async def _handle(self, m: _Message) -> None:
        try:
            if m.event is not None and self._handler.execute is not None:
                with telemetry.activate(m.span, m.event):
                    try:
                        m.result = await self._handler.execute(m.event)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        m.failure = exc
        finally:
            self._executing -= 1
            self._slot_freed.set()
        self._to_write.append(m)
        self._write_wake.set()
        await m.written

    async def _write_loop(self) -> None:
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            await self.flush()

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_wake.wait()
            self._commit_wake.clear()
            await self._commit(self._consumer.assignment())

    async def flush(self) -> None:
        """Write every finished message in one transaction; wake the committer."""
        batch, self._to_write = self._to_write, []
        if not batch:
            return
        written = batch
        try:
            self._write(batch)
        except Exception as exc:
            if unavailable(exc):
                written = []
            else:
                # One message made the write fail: write each alone, which isolates it.
                log.exception("writing finished messages failed; writing them one at a time")
                written = [m for m in batch if self._write_alone(m)]
            if len(written) < len(batch):
                # The database refused (locked, gone): keep the rest and retry.
                log.warning("database unavailable; retrying", waiting=len(batch) - len(written))
                self._to_write = [m for m in batch if m not in written] + self._to_write
                await asyncio.sleep(0.5)
                self._write_wake.set()
        for m in written:
            telemetry.end(m.span, m.failure or m.poison)
            m.offsets.finished(m.record.offset)
            if not m.written.done():
                m.written.set_result(None)
        if written:
            self._relay.notify()
            self._commit_wake.set()

    def _write_alone(self, m: _Message) -> bool:
        """Write one message, or dead-letter it when that fails; False when the
        database refuses both (then it is kept for the next try)."""
        try:
            self._write([m])
            return True
        except Exception as exc:
            if unavailable(exc):
                return False
            failure = exc
        log.error(
            "message failed alone; dead-lettering", topic=m.record.topic, error=describe(failure)
        )
        try:
            with self._engine.begin() as conn:
                self._dead_letter(conn, m.record, DlqReason.PROCESSING_ERROR, failure, m.event)
        except Exception:
            log.exception("dead-lettering failed; retrying")
            return False
        m.failure = failure
        return True

    def _write(self, batch: list[_Message]) -> None:
        if all(m.event is not None and m.failure is None for m in batch):
            try:
                with self._engine.begin() as conn:
                    fresh = [
                        Fresh(m.record.topic, m.event, m.result, m.span)
                        for m in batch
                        if m.event is not None
                    ]
                    apply_batch(
                        conn, self._handler, group=self._group, service=self._service, batch=fresh
                    )
                self.stats.handled += len(batch)
                return
            except Exception as refused:
                # A message another member recorded meanwhile, or a failing handler:
                # redo the batch one savepoint per message, which isolates it.
                log.debug(
                    "batch write refused; writing message by message", error=describe(refused)
                )
        with self._engine.begin() as conn:
            for m in batch:
                with telemetry.activate(m.span, m.event):
                    if m.poison is not None:
                        self._dead_letter(conn, m.record, m.poison.reason, m.poison, None)
                    elif m.failure is not None or m.event is None:
                        exc = m.failure or RuntimeError("no event")
                        self._dead_letter(conn, m.record, DlqReason.PROCESSING_ERROR, exc, m.event)
                    else:
                        self._apply(conn, m, m.event)

    def _apply(self, conn: Connection, m: _Message, e: Event) -> None:
        savepoint = conn.begin_nested()
        try:
            # Another member may have handled it during a rebalance: then it is a duplicate.
            if not record_received(conn, self._group, message_id(e.envelope), m.record.topic):
                savepoint.commit()
                self.stats.duplicates += 1
                note_duplicate(self._service, m.record.topic, e.envelope)
                return
            # The process span's context (the incoming one with tracing off).
            tp, ts = telemetry.outgoing_context(e.envelope.traceparent, e.envelope.tracestate)
            uow = UnitOfWork(conn, source=self._service, traceparent=tp, tracestate=ts)
            self._handler.apply(e, m.result, uow)
            uow.flush()
            savepoint.commit()
            self.stats.handled += 1
        except Exception as exc:
            savepoint.rollback()
            log.exception(
                "handler failed; dead-lettering", topic=m.record.topic, ce_id=e.envelope.id
            )
            self._dead_letter(conn, m.record, DlqReason.PROCESSING_ERROR, exc, e)
            telemetry.mark_failed(type(exc).__name__, describe(exc))

    def _dead_letter(
        self,
        conn: Connection,
        r: ConsumerRecord[bytes, bytes],
        reason: str,
        exc: BaseException,
        event: Event | None,
    ) -> None:
        dead_letter_record(
            conn,
            r,
            reason=reason,
            error_type=type(exc).__name__,
            message=describe(exc),
            service=self._service,
        )
        refusal = Refusal(r, event, reason, type(exc).__name__, describe(exc))
        tell_refused(conn, self._handler, refusal, self._service)
        self.stats.dead_lettered += 1

    async def _commit(self, partitions: Iterable[TopicPartition]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in partitions:
            tracked = self._offsets.get(tp)
            if tracked is None:
                continue
            point = tracked.commit_point()
            if point is not None and point != tracked.committed:
                offsets[tp] = OffsetAndMetadata(point, "")
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Not committed means redelivered; the inbox makes that harmless.
            log.warning("offset commit failed; records will be redelivered", error=str(exc))
            return
        for tp, o in offsets.items():
            self._offsets[tp].committed = o.offset

    async def release(self, partitions: Iterable[TopicPartition], timeout_s: float) -> int:
        """Let the messages of these partitions finish within ``timeout_s``, commit
        what finished, and cancel the rest (not committed: the next owner runs them).
        Returns how many were cancelled."""
        lost = set(partitions)
        # Queued messages never started: not committed, the next owner runs them.
        kept = deque(m for m in self._ready if m.tp not in lost)
        for m in self._ready:
            if m.tp in lost and m.event is not None:
                self._ids_in_flight.discard(message_id(m.event.envelope))
        self._ready = kept
        tasks = [t for t, m in self._tasks.items() if m.tp in lost]
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self.flush()
        await self._commit(lost)
        for tp in lost:
            self._offsets.pop(tp, None)
        if pending:
            log.warning("released unfinished messages", count=len(pending))
        return len(pending)

    async def shutdown(self, timeout_s: float) -> int:
        """Stop fetching; finish or release everything in flight; stop the writer."""
        self._stopping = True
        self._slot_freed.set()
        cancelled = await self.release(list(self._offsets), timeout_s)
        for t in self._background:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        return cancelled


class ReleaseOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Rebalance hooks: finish or release revoked work; report assignments."""

    def __init__(
        self,
        loop: ConcurrentConsumeLoop,
        on_assigned: Callable[[set[TopicPartition]], None] | None = None,
    ) -> None:
        self._loop = loop
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            await self._loop.release(revoked, self._loop.release_timeout_s)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions assigned", partitions=sorted(f"{t.topic}[{t.partition}]" for t in assigned)
        )
        if self._on_assigned is not None:
            self._on_assigned(assigned)
