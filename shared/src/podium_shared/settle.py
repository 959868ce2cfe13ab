"""What becomes of a consumed message, the one path both consume loops call.

A ``Settler`` settles every consumed record as exactly one of: handled (the
handler's state change, its outgoing messages and the inbox record written in
one transaction), a duplicate (the inbox had it, or another member recorded it
meanwhile), or dead-lettered (to ``<topic>.dlq`` through the outbox, with its
reason, in the same transaction). The loops differ only in when they call it
and which offsets they commit::

    records ─▶ take      decode, ask the inbox, read ahead (prepare)  ─▶ new | duplicates
    new     ─▶ start     its ``process <topic>`` span, as its handling begins
            ─▶ execute   the handler's outside work, no transaction (a failure stays on it)
            ─▶ write     one transaction: apply each (or dead-letter it), inbox and outbox
                         ├ clean batch: one inbox insert, one outbox insert, no savepoints
                         │              (``apply_all``: the handler takes the batch at once;
                         │              ``inbox_at_write``: the inbox insert, not ``take``,
                         │              tells the duplicates, one round trip fewer;
                         │              ``batch``: its ``apply`` calls share one scope)
                         └ otherwise:   one savepoint per message, which isolates the one at fault
    a message that still fails alone ─▶ dead_letter_alone, in a transaction of its own

``ConsumeLoop`` runs that for one fetched batch at a time; ``ConcurrentConsumeLoop``
executes messages as slots free and writes whatever has finished. Metrics and
``stats`` are counted once the transaction that settled a message has committed,
never in a tracing hook: tracing off, sampled out or broken changes no count.
"""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Awaitable, Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from aiokafka import ConsumerRecord
from sqlalchemy import exc as db_errors
from sqlalchemy.engine import Connection, Engine

from podium_contracts import ContractError, Event, Headers, decode_record
from podium_shared import metrics, telemetry
from podium_shared.dbthread import DbThread
from podium_shared.dlq import DlqReason, dead_letter
from podium_shared.outbox import (
    MessageId,
    OutgoingMessage,
    UnitOfWork,
    message_id,
    record_all_received,
    record_new_received,
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
    # False for an event this handler has nothing to do with (memory and a task that
    # uses no memory): it is passed over at once, with no inbox record and no
    # transaction, as a duplicate is. None: every event is handled.
    wants: Callable[[Event], bool] | None = None
    # A clean batch at once, in place of ``apply`` for each message: for a handler that
    # publishes nothing and can write a batch in fewer statements (the api's projection).
    # A batch it fails goes message by message through ``apply``, as any other.
    apply_all: Callable[[Connection, list[Event]], None] | None = None
    # True: the inbox is not read before the batch's transaction; its one inbox insert
    # skips the messages it holds and says which it took, and ``apply_all`` gets those.
    # That saves a transaction and a query per batch: on PostgreSQL a round trip each
    # (the api's projection, which ``execute``s and ``prepare``s nothing). For an inbox
    # keyed by source from the start (see ``outbox.record_new_received``).
    inbox_at_write: bool = False
    # The scope of a clean batch's ``apply`` calls, given the batch's events: entered
    # after its inbox insert, left before its outbox insert, in the same transaction. A
    # handler reads for the whole batch on entering (the router: its runs, locked) and
    # writes what its ``apply`` calls held back on leaving. The message-by-message retry
    # of a batch that failed runs without it.
    batch: Callable[[Connection, list[Event]], AbstractContextManager[object]] | None = None

    def __post_init__(self) -> None:
        if self.inbox_at_write and (
            self.apply_all is None or self.execute is not None or self.prepare is not None
        ):
            raise ValueError("inbox_at_write needs apply_all, and no execute or prepare")


@dataclass(slots=True)
class LoopStats:
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    passed_over: int = 0  # events the handler does not want (Handler.wants)


class Outcome(enum.Enum):
    HANDLED = "handled"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"
    SKIPPED = "skipped"  # would have been dead-lettered, by a loop that does not (an observer)


@dataclass(eq=False, slots=True)
class Message:
    """One consumed record on its way: its event (None when it could not be decoded or
    its inbox entry could not be read), the error that sends it to the DLQ before any
    write (decoding, the inbox, ``execute``), the ``execute`` result, its
    ``process <topic>`` span and, once written, its outcome (``refused``: the error
    it was dead-lettered for)."""

    record: ConsumerRecord[bytes, bytes]
    event: Event | None = None
    error: BaseException | None = None
    result: Any = None
    span: Any = None
    outcome: Outcome | None = None
    refused: BaseException | None = None

    @property
    def id(self) -> MessageId | None:
        return message_id(self.event.envelope) if self.event is not None else None


def record_headers(record: ConsumerRecord[bytes, bytes]) -> Headers:
    """A consumed record's headers as (name, bytes) pairs."""
    return [(k, v if v is not None else b"") for k, v in (record.headers or ())]


# The inbox source under which a consumer notes the records it dead-lettered. Their
# ce_id cannot be used: a replay publishes the record again with the same ce_id, and
# must be handled. A record is named by where it sits in the log (and when it was
# written, so that a memory-only broker restarted from offset 0 names new records anew).
DEAD_LETTERED_SOURCE = "podium.dead-lettered"


def dead_lettered_id(record: ConsumerRecord[bytes, bytes]) -> MessageId:
    """The inbox identity of a record this consumer dead-letters: its place in the log."""
    # The topic goes in the source (300 characters hold any topic name), the place in
    # the id (200 characters).
    place = f"{record.partition}:{record.offset}:{record.timestamp}"
    return f"{DEAD_LETTERED_SOURCE}:{record.topic}", place


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


def dlq_reason(exc: BaseException) -> str:
    """The DLQ reason for an error: a contract error (an undecodable message, or a
    handler refusing one) names its own; any other is a ``processing_error``."""
    return exc.reason if isinstance(exc, ContractError) else DlqReason.PROCESSING_ERROR


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
    telemetry.event("dead_lettered", reason=reason, **{"error.type": error_type})
    log.warning(
        "dead-lettered", topic=record.topic, offset=record.offset, reason=reason, error=message
    )


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
        event = decode_record(r.value, record_headers(r), r.key, accepts=accepts)
        # Where it was read: on a topic bound to one writer (a tenant's), that says who wrote it.
        return Event(event.envelope, event.payload, r.topic)


class Settler:
    """Takes, executes and writes consumed messages for one consumer group member
    (see the module's docstring); ``stats`` counts what it settled."""

    def __init__(
        self,
        *,
        engine: Engine,
        handler: Handler[Any],
        group: str,
        service: str,
        carries: Callable[[str], Collection[str]] | None = None,
        dead_letters: bool = True,
    ) -> None:
        self.engine = engine
        # False for an observer (the api's projection): it reads topics that another
        # service owns, and that owner dead-letters their poison; a second copy in the
        # DLQ would be replayed twice.
        self.dead_letters = dead_letters
        self.handler = handler
        self.group = group
        self.service = service
        self._decode = RecordDecoder(carries)
        self.stats = LoopStats()
        # Counted on the loop (duplicates found by the inbox) and on the database thread
        # (what a write settled, podium_shared.dbthread): one count at a time.
        self._counting = threading.RLock()

    def take(
        self, records: list[ConsumerRecord[bytes, bytes]], claimed: set[MessageId]
    ) -> tuple[list[Message], list[Message]]:
        """Decode records and ask the inbox: the new messages, in fetch order, and the
        duplicates (seen by the inbox, or in ``claimed``: the ids already on their way,
        to which the new ones are added), with the events the handler passes over among
        the latter (settled too: nothing to write). A new message's span starts with
        ``start``. ``taken`` is the same with the inbox asked on a database thread."""
        messages, passed = self.decode(records)
        return self.sort(messages, self.ask(messages), claimed, passed)

    async def taken(
        self, records: list[ConsumerRecord[bytes, bytes]], claimed: set[MessageId], db: DbThread
    ) -> tuple[list[Message], list[Message]]:
        """``take``, with the inbox asked on ``db``'s thread while the loop goes on.

        An id in ``claimed`` when the question was asked counts as claimed even if it
        was written and left ``claimed`` meanwhile: the inbox's answer may predate that
        write, and the message must not run twice."""
        messages, passed = self.decode(records)
        on_their_way = set(claimed)
        done = await db.run(self.ask, messages) if messages else set()
        return self.sort(messages, done | on_their_way, claimed, passed)

    def decode(
        self, records: list[ConsumerRecord[bytes, bytes]]
    ) -> tuple[list[Message], list[Message]]:
        """The records decoded: the messages to settle, and those the handler passes over."""
        messages = [self._decoded(r) for r in records]
        if self.handler.wants is not None:
            return self._wanted(messages)
        return messages, []

    def ask(self, messages: list[Message]) -> set[MessageId]:
        """The ids the inbox has seen among ``messages``, read ahead for the rest
        (``prepare``); a message the inbox could not be asked about gets its error.
        Nothing to ask: no connection either; nor for a handler whose inbox is asked
        at write, in its inbox insert (``Handler.inbox_at_write``)."""
        if not messages or self.handler.inbox_at_write:
            return set()
        decoded = [m for m in messages if m.id is not None]
        with self.engine.connect() as conn:
            done, unreadable = seen_each(conn, self.group, [m.id for m in decoded if m.id])
            for m in decoded:
                if m.id in unreadable:
                    m.error, m.event = unreadable[m.id], None
            fresh = [m.event for m in messages if m.event is not None and m.id not in done]
            prepare_quietly(conn, self.handler, fresh)
        return done

    def sort(
        self,
        messages: list[Message],
        done: set[MessageId],
        claimed: set[MessageId],
        passed: list[Message],
    ) -> tuple[list[Message], list[Message]]:
        """The new messages and the duplicates (with ``passed``), given the ids the
        inbox has seen (``done``); the new ones join ``claimed``."""
        new: list[Message] = []
        duplicates: list[Message] = []
        for m in messages:
            if m.id is not None:
                if m.id in done or m.id in claimed:
                    self._duplicate(m)
                    duplicates.append(m)
                    continue
                claimed.add(m.id)
            new.append(m)
        return new, duplicates

    def _wanted(self, messages: list[Message]) -> tuple[list[Message], list[Message]]:
        """The messages to settle, and those whose events the handler does not want."""
        assert self.handler.wants is not None
        wanted: list[Message] = []
        passed: list[Message] = []
        for m in messages:
            ok = m.event is None or m.error is not None or self.handler.wants(m.event)
            (wanted if ok else passed).append(m)
        with self._counting:
            self.stats.passed_over += len(passed)
        return wanted, passed

    def start(self, m: Message) -> None:
        """Open the message's ``process <topic>`` span, as its handling begins."""
        m.span = start_span(m.record, m.event, group=self.group, service=self.service)

    def _decoded(self, r: ConsumerRecord[bytes, bytes]) -> Message:
        try:
            return Message(r, event=self._decode(r))
        except Exception as exc:  # a ContractError names its reason; any other is ours
            return Message(r, error=exc)

    async def execute(self, m: Message) -> None:
        """The handler's outside work, inside the message's span; a failure stays on
        the message, which is then dead-lettered when written."""
        if m.event is None or m.error is not None or self.handler.execute is None:
            return
        with telemetry.activate(m.span, m.event):
            try:
                m.result = await self.handler.execute(m.event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                m.error = exc

    def write(self, batch: list[Message]) -> None:
        """Settle executed messages in one transaction. Raises when that transaction
        fails (the database, or something no savepoint caught): nothing of it is
        settled then, and the caller tries again or isolates the message at fault."""
        if not batch:
            return
        for m in batch:  # what a failed try decided was rolled back with it
            m.outcome = m.refused = None
        if all(m.event is not None and m.error is None for m in batch) and self._write_clean(batch):
            return
        with self.engine.begin() as conn:
            for m in batch:
                with telemetry.activate(m.span, m.event):
                    if m.event is None or m.error is not None:
                        self._dead_letter(conn, m, m.error or RuntimeError("no event"))
                    else:
                        self._apply(conn, m, m.event)
        self._settled(batch)

    def _write_clean(self, batch: list[Message]) -> bool:
        """The common case in few statements, every message new and every handler
        succeeding: one inbox insert and one outbox insert for the whole batch, no
        savepoints. False when that does not hold (a message another member recorded
        meanwhile, or a failing handler): then the batch is written again with a
        savepoint per message, which isolates the one at fault. With ``inbox_at_write``
        the inbox insert skips what it holds, and those messages are duplicates."""
        taken: set[MessageId] | None = None  # None: every message of the batch
        try:
            with self.engine.begin() as conn:
                ids = [(m.id, m.record.topic) for m in batch if m.id]
                if self.handler.inbox_at_write:
                    assert self.handler.apply_all is not None
                    taken = record_new_received(conn, self.group, ids)
                    fresh = [m.event for m in batch if m.id in taken and m.event is not None]
                    if fresh:
                        self.handler.apply_all(conn, fresh)
                elif self.handler.apply_all is not None:
                    record_all_received(conn, self.group, ids)
                    self.handler.apply_all(conn, [m.event for m in batch if m.event is not None])
                else:
                    record_all_received(conn, self.group, ids)
                    outgoing: list[OutgoingMessage] = []
                    with self._batch_scope(conn, batch):
                        for m in batch:
                            assert m.event is not None
                            with telemetry.activate(m.span, m.event):
                                outgoing.extend(self._applied(conn, m, m.event).pending)
                    write_outbox(conn, outgoing)
        except Exception as refused:
            log.debug("batch write refused; writing message by message", error=describe(refused))
            return False
        return self._written(batch, taken)

    def _written(self, batch: list[Message], taken: set[MessageId] | None) -> bool:
        for m in batch:
            m.outcome = Outcome.HANDLED if taken is None or m.id in taken else Outcome.DUPLICATE
        self._settled(batch)
        return True

    def _batch_scope(
        self, conn: Connection, batch: list[Message]
    ) -> AbstractContextManager[object]:
        if self.handler.batch is None:
            return nullcontext()
        return self.handler.batch(conn, [m.event for m in batch if m.event is not None])

    def _applied(self, conn: Connection, m: Message, e: Event) -> UnitOfWork:
        """Run the handler's ``apply``; its messages are in the returned unit of work."""
        # The process span's context (the incoming one with tracing off).
        tp, ts = telemetry.outgoing_context(e.envelope.traceparent, e.envelope.tracestate)
        uow = UnitOfWork(conn, source=self.service, traceparent=tp, tracestate=ts)
        self.handler.apply(e, m.result, uow)
        return uow

    def _apply(self, conn: Connection, m: Message, e: Event) -> None:
        savepoint = conn.begin_nested()
        try:
            # Another member may have handled it during a rebalance: then it is a duplicate.
            if not record_received(conn, self.group, message_id(e.envelope), m.record.topic):
                savepoint.commit()
                m.outcome = Outcome.DUPLICATE
                return
            self._applied(conn, m, e).flush()
            savepoint.commit()
            m.outcome = Outcome.HANDLED
        except Exception as exc:
            savepoint.rollback()
            log.exception(
                "handler failed; dead-lettering", topic=m.record.topic, ce_id=e.envelope.id
            )
            self._dead_letter(conn, m, exc)

    def _dead_letter(self, conn: Connection, m: Message, exc: BaseException) -> None:
        reason, etype, text = dlq_reason(exc), type(exc).__name__, describe(exc)
        if not self.dead_letters:
            log.warning("skipped", topic=m.record.topic, offset=m.record.offset, error=text)
            m.outcome, m.refused = Outcome.SKIPPED, exc
            return
        if not record_received(conn, self.group, dead_lettered_id(m.record), m.record.topic):
            # This very record was dead-lettered before and is redelivered (its offset
            # commit was lost to a rebalance or a stop): one DLQ copy is enough.
            m.outcome = Outcome.DUPLICATE
            return
        dead_letter_record(
            conn, m.record, reason=reason, error_type=etype, message=text, service=self.service
        )
        refusal = Refusal(m.record, m.event, reason, etype, text)
        tell_refused(conn, self.handler, refusal, self.service)
        m.outcome, m.refused = Outcome.DEAD_LETTERED, exc

    def dead_letter_alone(self, m: Message, exc: BaseException) -> None:
        """Dead-letter a message that failed even alone, in a transaction of its own;
        raises only when the database refuses (then nothing is settled)."""
        with self.engine.begin() as conn, telemetry.activate(m.span, m.event):
            self._dead_letter(conn, m, exc)
        self._settled([m])

    def _settled(self, batch: list[Message]) -> None:
        """Count what the committed transaction settled and end the messages' spans."""
        with self._counting:
            self._count(batch)

    def _count(self, batch: list[Message]) -> None:
        for m in batch:
            topic = m.record.topic
            if m.outcome is Outcome.DUPLICATE:
                self._duplicate(m)
            elif m.outcome is Outcome.HANDLED:
                self.stats.handled += 1
                metrics.consumed(self.service, topic)
            elif m.outcome is Outcome.DEAD_LETTERED and m.refused is not None:
                self.stats.dead_lettered += 1
                metrics.consumed(self.service, topic)
                metrics.dead_lettered(
                    self.service, topic, dlq_reason(m.refused), type(m.refused).__name__
                )
            elif m.outcome is Outcome.SKIPPED:
                metrics.consumed(self.service, topic)
            telemetry.end(m.span, m.refused)

    def _duplicate(self, m: Message) -> None:
        """Count and log a message the inbox had already taken (same source and id)."""
        with self._counting:
            self.stats.duplicates += 1
        metrics.duplicate(self.service, m.record.topic)
        if m.event is None:  # a record dead-lettered before, redelivered
            r = m.record
            log.info("already dead-lettered", topic=r.topic, partition=r.partition, offset=r.offset)
            return
        env = m.event.envelope
        log.info("duplicate skipped", topic=m.record.topic, ce_source=env.source, ce_id=env.id)
