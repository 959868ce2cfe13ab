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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from sqlalchemy import exc as db_errors
from sqlalchemy.engine import Connection, Engine

from podium_contracts import ContractError, Envelope, Event, Headers, decode_record
from podium_shared import metrics, telemetry
from podium_shared.dlq import DlqReason, dead_letter
from podium_shared.outbox import (
    MessageId,
    OutboxRelay,
    OutgoingMessage,
    UnitOfWork,
    message_id,
    record_all_received,
    record_received,
    seen_before,
    write_outbox,
)

log = structlog.get_logger(__name__)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A consumed message that went to its DLQ, and why: what a service may tell its sender."""

    record: ConsumerRecord[bytes, bytes]
    event: Event | None  # None when it could not be decoded
    reason: str
    error_type: str
    message: str


@dataclass(frozen=True, slots=True)
class Handler(Generic[R]):
    apply: Callable[[Event, R | None, UnitOfWork], None]
    execute: Callable[[Event], Awaitable[R]] | None = None
    prepare: Callable[[Connection, list[Event]], None] | None = None
    # Called in the transaction that dead-letters a message, so whoever waits on it hears
    # (the router answers a refused submission with TaskRejected).
    refused: Callable[[Refusal, UnitOfWork], None] | None = None


def tell_refused(conn: Connection, handler: Handler[Any], refusal: Refusal, service: str) -> None:
    """Run the handler's ``refused`` hook beside the DLQ record; a failing hook is logged
    and rolled back, never in the way of the dead-lettering itself."""
    if handler.refused is None:
        return
    savepoint = conn.begin_nested()
    try:
        uow = UnitOfWork(conn, source=service)
        handler.refused(refusal, uow)
        uow.flush()
        savepoint.commit()
    except Exception:
        savepoint.rollback()
        log.exception("refusal notice failed", topic=refusal.record.topic)


@dataclass(slots=True)
class LoopStats:
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0


def record_headers(record: ConsumerRecord[bytes, bytes]) -> Headers:
    """A consumed record's headers as (name, bytes) pairs."""
    return [(k, v if v is not None else b"") for k, v in (record.headers or ())]


def printable_key(key: str) -> str:
    """A header key that can be published again: a key that was not UTF-8 on the wire
    (its bytes kept as lone surrogates by ``podium_shared.records``) becomes its bytes
    with backslash escapes, e.g. ``\\xff-key``, since Kafka header keys must be UTF-8."""
    if key.isascii():
        return key
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database is unavailable (gone, locked, timed out) rather
    than that a message is at fault: then nothing is dead-lettered or committed, and
    the messages are tried again."""
    return isinstance(
        exc, db_errors.OperationalError | db_errors.InterfaceError | db_errors.TimeoutError
    )


def describe(exc: BaseException) -> str:
    """An error's message, for a dead letter: never raises, whatever the error holds
    (``str()`` of an error can raise itself, e.g. RecursionError on a deep payload)."""
    try:
        return str(exc)
    except Exception as failed:
        return f"<{type(exc).__name__}; its message could not be rendered: {type(failed).__name__}>"


def dead_letter_record(
    conn: Connection,
    record: ConsumerRecord[bytes, bytes],
    *,
    reason: str,
    error_type: str,
    message: str,
    service: str,
) -> None:
    """Queue a consumed record for its DLQ in this transaction, via the outbox.

    Its headers go along (keys made publishable); should the database refuse them,
    the record goes without them, the message saying so, rather than not at all."""

    def queue(headers: Headers, note: str = "") -> None:
        uow = UnitOfWork(conn, source=service)
        uow.publish_raw(
            dead_letter(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                key=record.key,
                value=record.value,
                headers=headers,
                reason=DlqReason(reason),
                error_type=error_type,
                error_message=note + message,
                service=service,
            )
        )
        uow.flush()

    try:
        with conn.begin_nested():
            queue([(printable_key(k), v) for k, v in record_headers(record)])
    except Exception as refused:
        log.warning(
            "dead letter refused with its headers; writing it without", error=describe(refused)
        )
        queue([], f"(original headers dropped: {type(refused).__name__}) ")
    metrics.dead_lettered(service, record.topic, reason, error_type)
    telemetry.event("dead_lettered", reason=reason, **{"error.type": error_type})
    log.warning(
        "dead-lettered", topic=record.topic, offset=record.offset, reason=reason, error=message
    )


def note_duplicate(service: str, topic: str, envelope: Envelope) -> None:
    """Count and log a message the inbox had already taken (same source and id)."""
    metrics.duplicate(service, topic)
    log.info("duplicate skipped", topic=topic, ce_source=envelope.source, ce_id=envelope.id)


def seen_each(
    conn: Connection, group: str, ids: list[MessageId]
) -> tuple[set[MessageId], dict[MessageId, Exception]]:
    """The ids the inbox has seen, and the ids it could not be asked about: when the
    batch's question fails (and the database is there), each id is asked alone, so
    one message that makes the query fail is dead-lettered, not the whole batch."""
    try:
        return set(seen_before(conn, group, ids)), {}
    except Exception as exc:
        if unavailable(exc):
            raise
        conn.rollback()
    done: set[MessageId] = set()
    failed: dict[MessageId, Exception] = {}
    for ce_id in ids:
        try:
            done |= set(seen_before(conn, group, [ce_id]))
        except Exception as exc:
            if unavailable(exc):
                raise
            conn.rollback()
            failed[ce_id] = exc
    return done, failed


def start_span(
    r: ConsumerRecord[bytes, bytes], e: Event | None, *, group: str, service: str
) -> Any:
    """``telemetry.start_consume``, or no span: tracing never stops a message."""
    try:
        return telemetry.start_consume(r, e, group=group, service=service)
    except Exception:
        log.exception("starting a process span failed; going on without it")
        return None


def prepare_quietly(conn: Connection, handler: Handler[Any], events: list[Event]) -> None:
    """The handler's read ahead for a batch. It only saves queries (without it each
    message reads for itself), so a failure is logged, not the batch's fault."""
    if handler.prepare is None or not events:
        return
    try:
        handler.prepare(conn, events)
    except Exception as exc:
        if unavailable(exc):
            raise
        log.exception("prepare failed; going on without it")
        conn.rollback()


@dataclass(frozen=True, slots=True)
class Fresh:
    """A new message of a batch, ready to apply: its topic, event, execute result, span."""

    topic: str
    event: Event
    result: Any
    span: Any


def apply_batch(
    conn: Connection, handler: Handler[Any], *, group: str, service: str, batch: list[Fresh]
) -> None:
    """The common case of a batch write, in few statements: every message new and every
    handler succeeding; one inbox insert and one outbox insert for the whole batch, no
    savepoints. Raises when that does not hold (a message another member recorded
    meanwhile, or a failing handler): the caller rolls back and writes the batch again
    with a savepoint per message, which isolates the one at fault."""
    record_all_received(conn, group, [(message_id(f.event.envelope), f.topic) for f in batch])
    outgoing: list[OutgoingMessage] = []
    for f in batch:
        e = f.event
        with telemetry.activate(f.span, e):
            # The process span's context (the incoming one with tracing off).
            tp, ts = telemetry.outgoing_context(e.envelope.traceparent, e.envelope.tracestate)
            uow = UnitOfWork(conn, source=service, traceparent=tp, tracestate=ts)
            handler.apply(e, f.result, uow)
            outgoing.extend(uow.pending)
    write_outbox(conn, outgoing)


class RecordDecoder:
    """``decode`` bound to the contracts each record's topic carries (``carries``:
    topic name → ce_types, e.g. ``Topics.carries``; None accepts any known type)."""

    def __init__(self, carries: Callable[[str], Collection[str]] | None) -> None:
        self._carries = carries
        self._by_topic: dict[str, Collection[str]] = {}

    def __call__(self, r: ConsumerRecord[bytes, bytes]) -> Event:
        accepts: Collection[str] | None = None
        if self._carries is not None:
            accepts = self._by_topic.get(r.topic)
            if accepts is None:
                accepts = self._by_topic[r.topic] = self._carries(r.topic)
        return decode_record(r.value, record_headers(r), r.key, accepts=accepts)


class ConsumeLoop:
    """Runs one consumer group member until cancelled."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        engine: Engine,
        relay: OutboxRelay,
        handler: Handler[Any],
        group: str,
        service: str,
        poll_timeout_ms: int = 100,
        carries: Callable[[str], Collection[str]] | None = None,
    ) -> None:
        self._consumer = consumer
        self._engine = engine
        self._relay = relay
        self._handler = handler
        self._group = group
        self._service = service
        self._poll_timeout_ms = poll_timeout_ms
        self._decode = RecordDecoder(carries)
        self.stats = LoopStats()

    async def run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=self._poll_timeout_ms)
            records = [r for recs in batches.values() for r in recs]
            if records:
                await self.process(records)

    async def process(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Handle one fetched batch and commit its offsets; whatever fails in it is
        dead-lettered (see the module's docstring)."""
        try:
            await self._handle(records)
        except Exception as exc:
            if unavailable(exc):
                raise
            log.exception("batch failed; handling its messages one at a time")
            for r in records:
                await self._handle_alone(r)
        self._relay.notify()
        await self._commit(records)

    async def _handle_alone(self, r: ConsumerRecord[bytes, bytes]) -> None:
        try:
            await self._handle([r])
        except Exception as exc:
            if unavailable(exc):
                raise
            log.exception("message failed alone; dead-lettering", topic=r.topic, offset=r.offset)
            # Raises only when the database refuses: then nothing is committed.
            with self._engine.begin() as conn:
                self._dead_letter_failure(conn, r, exc)

    async def _handle(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        decoded: list[tuple[ConsumerRecord[bytes, bytes], Event]] = []
        poison: list[tuple[ConsumerRecord[bytes, bytes], str, BaseException]] = []
        for r in records:
            try:
                decoded.append((r, self._decode(r)))
            except ContractError as exc:
                poison.append((r, exc.reason, exc))
            except Exception as exc:  # a fault of ours, not the message's: replayable
                poison.append((r, DlqReason.PROCESSING_ERROR, exc))

        with self._engine.connect() as conn:
            done, unreadable = seen_each(
                conn, self._group, [message_id(e.envelope) for _, e in decoded]
            )
            if unreadable:
                poison += [
                    (r, DlqReason.PROCESSING_ERROR, unreadable[message_id(e.envelope)])
                    for r, e in decoded
                    if message_id(e.envelope) in unreadable
                ]
                decoded = [(r, e) for r, e in decoded if message_id(e.envelope) not in unreadable]
            prepare_quietly(
                conn, self._handler, [e for _, e in decoded if message_id(e.envelope) not in done]
            )
        fresh: list[tuple[ConsumerRecord[bytes, bytes], Event]] = []
        ids_in_batch: set[tuple[str, str]] = set()
        for r, e in decoded:
            if message_id(e.envelope) in done or message_id(e.envelope) in ids_in_batch:
                self.stats.duplicates += 1
                note_duplicate(self._service, r.topic, e.envelope)
                continue
            ids_in_batch.add(message_id(e.envelope))
            fresh.append((r, e))
        spans = [start_span(r, e, group=self._group, service=self._service) for r, e in fresh]

        results: list[Any] = [None] * len(fresh)
        failures: dict[int, BaseException] = {}
        if self._handler.execute is not None and fresh:
            outcomes = await asyncio.gather(
                *(self._execute(e, spans[i]) for i, (_, e) in enumerate(fresh)),
                return_exceptions=True,
            )
            for i, out in enumerate(outcomes):
                if isinstance(out, asyncio.CancelledError):
                    raise out
                if isinstance(out, BaseException):
                    failures[i] = out
                else:
                    results[i] = out

        if not poison and not failures and fresh and self._write_all(fresh, results, spans):
            return
        with self._engine.begin() as conn:
            for r, reason, error in poison:
                span = start_span(r, None, group=self._group, service=self._service)
                with telemetry.activate(span):
                    self._dead_letter(conn, r, reason, type(error).__name__, describe(error), None)
                telemetry.end(span, error)
            for i, (r, e) in enumerate(fresh):
                with telemetry.activate(spans[i], e):
                    if i in failures:
                        self._dead_letter_failure(conn, r, failures[i], e)
                        telemetry.end(spans[i], failures[i])
                        continue
                    # The process span's context (the incoming one with tracing off).
                    tp, ts = telemetry.outgoing_context(
                        e.envelope.traceparent, e.envelope.tracestate
                    )
                    uow = UnitOfWork(conn, source=self._service, traceparent=tp, tracestate=ts)
                    savepoint = conn.begin_nested()
                    try:
                        if not record_received(conn, self._group, message_id(e.envelope), r.topic):
                            savepoint.commit()  # handled by another member meanwhile
                            self.stats.duplicates += 1
                            note_duplicate(self._service, r.topic, e.envelope)
                            telemetry.end(spans[i])
                            continue
                        self._handler.apply(e, results[i], uow)
                        uow.flush()
                        savepoint.commit()
                        self.stats.handled += 1
                        telemetry.end(spans[i])
                    except Exception as exc:
                        savepoint.rollback()
                        log.exception(
                            "handler failed; dead-lettering", topic=r.topic, ce_id=e.envelope.id
                        )
                        self._dead_letter_failure(conn, r, exc, e)
                        telemetry.end(spans[i], exc)

    def _write_all(
        self,
        fresh: list[tuple[ConsumerRecord[bytes, bytes], Event]],
        results: list[Any],
        spans: list[Any],
    ) -> bool:
        """``apply_batch`` in its own transaction; False when the batch must be
        written message by message."""
        batch = [Fresh(r.topic, e, results[i], spans[i]) for i, (r, e) in enumerate(fresh)]
        try:
            with self._engine.begin() as conn:
                apply_batch(
                    conn, self._handler, group=self._group, service=self._service, batch=batch
                )
        except Exception as refused:
            log.debug("batch write refused; writing message by message", error=describe(refused))
            return False
        for span in spans:
            telemetry.end(span)
        self.stats.handled += len(fresh)
        return True

    async def _execute(self, e: Event, span: Any) -> Any:
        """The handler's outside work, inside the message's span."""
        assert self._handler.execute is not None
        with telemetry.activate(span, e):
            return await self._handler.execute(e)

    def _dead_letter_failure(
        self,
        conn: Connection,
        r: ConsumerRecord[bytes, bytes],
        exc: BaseException,
        e: Event | None = None,
    ) -> None:
        # A handler that refuses a message with a contract error names the reason itself.
        reason = exc.reason if isinstance(exc, ContractError) else DlqReason.PROCESSING_ERROR
        self._dead_letter(conn, r, reason, type(exc).__name__, describe(exc), e)

    def _dead_letter(
        self,
        conn: Connection,
        r: ConsumerRecord[bytes, bytes],
        reason: str,
        etype: str,
        message: str,
        event: Event | None,
    ) -> None:
        dead_letter_record(
            conn, r, reason=reason, error_type=etype, message=message, service=self._service
        )
        refusal = Refusal(r, event, reason, etype, message)
        tell_refused(conn, self._handler, refusal, self._service)
        self.stats.dead_lettered += 1

    async def _commit(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = OffsetAndMetadata(r.offset + 1, "")
        assigned = self._consumer.assignment()
        # A partition revoked by a rebalance is redelivered to its new owner;
        # the inbox makes that harmless, so we only commit what we still own.
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            log.warning("offset commit failed; records will be redelivered", error=str(exc))
