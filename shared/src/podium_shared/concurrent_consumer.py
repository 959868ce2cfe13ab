"""A consume loop with up to N messages executing, beyond the partition count.

``ConsumeLoop`` handles one fetched batch at a time, so one slow message holds
back the whole batch. This loop starts a task per message as soon as a slot is
free, and commits each partition's offset only up to the last message that is
fully finished *and every message before it* (the contiguous commit point):

    partition 3:  10 ✔  11 ✔  12 …  13 ✔  14 …      → commits 12
    (a crash now redelivers 12, 13 and 14; the inbox skips 13)

Each message takes the path ``ConsumeLoop``'s do, the one ``podium_shared.settle``
holds: decode, inbox dedup, the handler's ``execute`` outside any transaction and
``apply`` inside one with the outbox, and dead-lettering. Finished messages are
written by one writer task, many per transaction (one savepoint each when the
batch is not clean).

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Unpack

import structlog
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from podium_shared import telemetry
from podium_shared.consumer import LoopParts, commit_offsets, settler_of
from podium_shared.dbthread import db_threads
from podium_shared.outbox import MessageId
from podium_shared.settle import Message, describe, unavailable

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
class _InFlight:
    """A message of this loop: where its offset is tracked, and when it was written."""

    message: Message
    tp: TopicPartition
    offsets: PartitionOffsets
    written: asyncio.Future[None] = field(default_factory=_new_future)


class ConcurrentConsumeLoop:
    """Runs one consumer group member with up to ``concurrency`` messages in flight."""

    def __init__(
        self, *, concurrency: int, release_timeout_s: float = 10.0, **parts: Unpack[LoopParts]
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._settler = settler_of(parts)
        # PostgreSQL's round trips leave the event loop (podium_shared.dbthread).
        self._reads, self._db = db_threads(parts["engine"])
        self._consumer = parts["consumer"]
        self._relay = parts["relay"]
        self._concurrency = concurrency
        self._poll_timeout_ms = parts.get("poll_timeout_ms", 100)
        self._idle = parts.get("idle")
        self.release_timeout_s = release_timeout_s
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._tasks: dict[asyncio.Task[None], _InFlight] = {}
        self._executing = 0
        # Fetched, deduplicated and waiting for a slot: up to one more round of slots,
        # so a freed slot starts its next message without a fetch round trip.
        self._ready: deque[_InFlight] = deque()
        self._ids_in_flight: set[MessageId] = set()
        self._to_write: list[_InFlight] = []
        # One flush at a time, as when its write blocked the loop: a release's flush
        # waits for the writer's, so what finished is marked before it commits.
        self._flushing = asyncio.Lock()
        self._write_wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._stopping = False
        self._commit_wake = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self.stats = self._settler.stats

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
                    if self._idle is not None:
                        self._idle.polled(bool(records) or bool(self._tasks))
                    if records and not self._stopping:
                        await self._take(records)
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

    async def _take(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Decode a fetched batch, drop what the inbox has seen, queue the rest."""
        tracked: dict[TopicPartition, PartitionOffsets] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            tracked[tp] = self._tracked(r)
            tracked[tp].started(r.offset)
        new, duplicates = await self._settler.taken(records, self._ids_in_flight, self._reads)
        for m in duplicates:
            tracked[TopicPartition(m.record.topic, m.record.partition)].finished(m.record.offset)
        for m in new:
            tp = TopicPartition(m.record.topic, m.record.partition)
            if self._offsets.get(tp) is not tracked[tp]:
                # Released (revoked, or a stop) while the inbox was asked: the next
                # owner runs it; nothing of it is committed here.
                self._forget(m)
                continue
            self._ready.append(_InFlight(m, tp, tracked[tp]))
        self._commit_wake.set()  # duplicates may have moved a commit point
        self._start_ready()

    def _tracked(self, r: ConsumerRecord[bytes, bytes]) -> PartitionOffsets:
        return self._offsets.setdefault(TopicPartition(r.topic, r.partition), PartitionOffsets())

    def _start_ready(self) -> None:
        """Start queued messages, in fetch order, while slots are free."""
        for _ in range(min(len(self._ready), self._free_slots())):
            m = self._ready.popleft()
            self._settler.start(m.message)
            self._executing += 1
            task = asyncio.create_task(self._handle(m), name=f"message-{m.tp.partition}")
            self._tasks[task] = m
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        m = self._tasks.pop(task)
        if task.cancelled():  # released: not committed, the next owner runs it again
            telemetry.end(m.message.span, "released")
        self._forget(m.message)
        self._slot_freed.set()

    def _forget(self, m: Message) -> None:
        if m.id is not None:
            self._ids_in_flight.discard(m.id)

    async def _handle(self, m: _InFlight) -> None:
        try:
            await self._settler.execute(m.message)
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
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        batch, self._to_write = self._to_write, []
        if not batch:
            return
        written = batch
        try:
            await self._db.run(self._settler.write, [m.message for m in batch])
        except Exception as exc:
            if unavailable(exc):
                written = []
            else:
                # One message made the write fail: write each alone, which isolates it.
                log.exception("writing finished messages failed; writing them one at a time")
                written = [m for m in batch if await self._db.run(self._write_alone, m.message)]
            if len(written) < len(batch):
                # The database refused (locked, gone): keep the rest and retry.
                log.warning("database unavailable; retrying", waiting=len(batch) - len(written))
                self._to_write = [m for m in batch if m not in written] + self._to_write
                await asyncio.sleep(0.5)
                self._write_wake.set()
        for m in written:
            m.offsets.finished(m.message.record.offset)
            if not m.written.done():
                m.written.set_result(None)
        if written:
            self._relay.notify()
            self._commit_wake.set()

    def _write_alone(self, m: Message) -> bool:
        """Write one message, or dead-letter it when that fails; False when the
        database refuses both (then it is kept for the next try)."""
        try:
            self._settler.write([m])
            return True
        except Exception as exc:
            if unavailable(exc):
                return False
            failure = exc
        log.error(
            "message failed alone; dead-lettering", topic=m.record.topic, error=describe(failure)
        )
        try:
            self._settler.dead_letter_alone(m, failure)
        except Exception:
            log.exception("dead-lettering failed; retrying")
            return False
        return True

    async def _commit(self, partitions: Iterable[TopicPartition]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in partitions:
            tracked = self._offsets.get(tp)
            if tracked is None:
                continue
            point = tracked.commit_point()
            if point is not None and point != tracked.committed:
                offsets[tp] = OffsetAndMetadata(point, "")
        if not await commit_offsets(self._consumer, offsets):
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
            if m.tp in lost:
                self._forget(m.message)
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
