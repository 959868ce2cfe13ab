"""The consume loop every service runs: decode, deduplicate, handle in one
transaction with the outbox, dead-letter poison, then commit offsets.

A handler is two plain functions:

- ``execute(event)`` (optional, async): the slow outside work, such as a
  capability call, run concurrently for the messages of one batch and outside
  any database transaction;
- ``apply(event, result, uow)`` (sync): the state change and the messages to
  publish, run inside the batch's transaction (a batch with no duplicate and no
  failure in one go; otherwise again with one savepoint per message);
- ``prepare(conn, events)`` (optional, sync): read what ``execute`` will need for
  a whole fetched batch in one query, instead of one query per message.
- ``batch(conn, events)`` (optional): a context manager around a clean batch's
  ``apply`` calls, in their transaction, for a handler that reads for the whole
  batch and writes it in fewer statements (the router).
- ``refused(refusal, uow)`` (optional, sync): told of each message the loop
  dead-letters, in the same transaction, to answer whoever waits on it.

A message that cannot be decoded, validated or handled goes to ``<topic>.dlq``
through the outbox, in the same transaction; the offset is committed and the
loop moves on, so one poison message never stalls a partition. That holds for
failures anywhere in the loop, not only in the handler: a batch that fails in
any step is handled again one message at a time, and a message that still
fails alone is dead-lettered in a transaction of its own
(``processing_error``). Only a database that refuses even that stops the loop,
uncommitted: the messages are redelivered, nothing is lost.

The path of one message (take, execute, write, dead-letter) is
``podium_shared.settle``, which ``ConcurrentConsumeLoop`` calls too; this module
holds the loop that runs it one fetched batch at a time, and the offset commit.
On PostgreSQL a batch's inbox question and its write run on the engine's database
threads, the event loop going on meanwhile (``podium_shared.dbthread``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any, NotRequired, TypedDict, Unpack

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy.engine import Engine

from podium_shared import telemetry
from podium_shared.dbthread import db_threads
from podium_shared.idle import IdleBackoff
from podium_shared.outbox import MessageId, OutboxRelay
from podium_shared.settle import (
    Handler,
    LoopStats,
    Message,
    Refusal,
    Settler,
    record_headers,
    unavailable,
)

# Re-exported: services import these from here.
__all__ = [
    "ConsumeLoop",
    "Handler",
    "LoopParts",
    "LoopStats",
    "Refusal",
    "commit_offsets",
    "record_headers",
]

log = structlog.get_logger(__name__)


async def commit_offsets(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
) -> bool:
    """Commit these offsets; False when the commit failed (a rebalance, the broker
    away): not committed means redelivered, and the inbox makes that harmless."""
    if not offsets:
        return False
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, KafkaError) as exc:
        log.warning("offset commit failed; records will be redelivered", error=str(exc))
        return False
    return True


class LoopParts(TypedDict):
    """The keyword arguments every consume loop is built from, declared once."""

    consumer: AIOKafkaConsumer
    engine: Engine
    relay: OutboxRelay
    handler: Handler[Any]
    group: str
    service: str
    poll_timeout_ms: NotRequired[int]  # how long one fetch waits for records; 100 if not given
    idle: NotRequired[IdleBackoff | None]  # lengthens an idle consumer's fetches (Tansu)
    # topic name → the ce_types it carries (e.g. ``Topics.carries``); None accepts any known type
    carries: NotRequired[Callable[[str], Collection[str]] | None]
    dead_letters: NotRequired[bool]  # False: skip poison instead (an observer of others' topics)


def settler_of(parts: LoopParts) -> Settler:
    """The ``Settler`` of a loop built from ``parts``; refuses a keyword no loop takes
    (a TypedDict is not checked at run time, and a misspelt option must not pass silently)."""
    unknown = set(parts) - LoopParts.__required_keys__ - LoopParts.__optional_keys__
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {', '.join(sorted(unknown))}")
    return Settler(
        engine=parts["engine"],
        handler=parts["handler"],
        group=parts["group"],
        service=parts["service"],
        carries=parts.get("carries"),
        dead_letters=parts.get("dead_letters", True),
    )


class ConsumeLoop:
    """Runs one consumer group member until cancelled, one fetched batch at a time."""

    def __init__(self, **parts: Unpack[LoopParts]) -> None:
        self._settler = settler_of(parts)
        # PostgreSQL's round trips leave the event loop (podium_shared.dbthread).
        self._reads, self._db = db_threads(parts["engine"])
        self._consumer = parts["consumer"]
        self._relay = parts["relay"]
        self._poll_timeout_ms = parts.get("poll_timeout_ms", 100)
        self._idle = parts.get("idle")
        self.stats = self._settler.stats

    async def run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=self._poll_timeout_ms)
            records = [r for recs in batches.values() for r in recs]
            wrote = await self.process(records) if records else False
            if self._idle is not None:
                # Only records it wrote for keep a consumer on the short wait: memory, fed
                # every task's events and wanting none of a `hello`'s, backs off as if idle.
                self._idle.polled(wrote)

    async def process(self, records: list[ConsumerRecord[bytes, bytes]]) -> bool:
        """Handle one fetched batch and commit its offsets; whatever fails in it is
        dead-lettered (see the module's docstring). True if it wrote for any record."""
        wrote = self._writes()
        try:
            await self._handle(records)
        except Exception as exc:
            if unavailable(exc):
                raise
            log.exception("batch failed; handling its messages one at a time")
            for r in records:
                await self._handle_alone(r)
        # A batch of duplicates and passed-over events wrote no outbox row: waking the
        # relay for it would only read an empty outbox (memory, for every task's events).
        wrote_any = self._writes() != wrote
        if wrote_any:
            self._relay.notify()
        await self._commit(records)
        return wrote_any

    def _writes(self) -> int:
        """How many messages this loop has settled with a write (handled or dead-lettered)."""
        return self.stats.handled + self.stats.dead_lettered

    async def _handle_alone(self, r: ConsumerRecord[bytes, bytes]) -> None:
        try:
            await self._handle([r])
        except Exception as exc:
            if unavailable(exc):
                raise
            log.exception("message failed alone; dead-lettering", topic=r.topic, offset=r.offset)
            # Raises only when the database refuses: then nothing is committed.
            await self._db.run(self._settler.dead_letter_alone, Message(r), exc)

    async def _handle(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        claimed: set[MessageId] = set()  # a message twice in one batch is handled once
        messages, _ = await self._settler.taken(records, claimed, self._reads)
        for m in messages:
            self._settler.start(m)
        try:
            await asyncio.gather(*(self._settler.execute(m) for m in messages))
            await self._db.run(self._settler.write, messages)
        except BaseException as exc:
            for m in messages:  # tried again alone, in spans of their own
                telemetry.end(m.span, exc)
            raise

    async def _commit(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = OffsetAndMetadata(r.offset + 1, "")
        assigned = self._consumer.assignment()
        # A partition revoked by a rebalance is redelivered to its new owner;
        # the inbox makes that harmless, so we only commit what we still own.
        await commit_offsets(self._consumer, {tp: o for tp, o in offsets.items() if tp in assigned})
