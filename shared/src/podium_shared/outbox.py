"""The transactional outbox and inbox.

A handler never talks to Kafka. It changes state through ``UnitOfWork.conn``
and records the messages it wants sent with ``UnitOfWork.publish``; the
consumer loop writes those rows, the inbox record of the consumed message and
the state change in one transaction, and commits the Kafka offset only after
it. The ``OutboxRelay`` publishes committed rows promptly (it is woken by the
commit) and deletes them once the broker acknowledged them; rows a crash left
behind are published by the relay's sweep when the service starts again.
Consumers deduplicate by ``ce_source`` and ``ce_id`` in their inbox, so a row
published twice (crash between send and delete) has one effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
import structlog
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)
from sqlalchemy.engine import Connection, Engine

from podium_contracts import Contract, Envelope, Headers, encode, new_id
from podium_shared import metrics, telemetry
from podium_shared.db import inbox, insert_ignore, insert_new_statement, outbox, outbox_parked
from podium_shared.dbthread import DbThread, off_loop
from podium_shared.limits import MAX_PAYLOAD_BYTES, PayloadTooLarge

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


_OUTBOX_INSERT = outbox.insert()


@dataclass
class UnitOfWork:
    """One transaction: state changes on ``conn`` plus the messages to publish."""

    conn: Connection
    source: str
    # The context of the message being handled: its process span's (the incoming
    # one with tracing off); what ``publish`` stamps when no span of its own is current.
    traceparent: str | None = None
    pending: list[OutgoingMessage] = field(default_factory=list)
    tracestate: str | None = None

    def publish(self, topic: str, payload: Contract, *, key: str) -> str:
        """Record a contract message to send after commit; returns its ce_id."""
        ce_id = new_id()
        # The current span's context (the process or routing span), so the message
        # the relay sends later continues this trace under it.
        traceparent, tracestate = telemetry.outgoing_context(self.traceparent, self.tracestate)
        value, headers = encode(
            payload, source=self.source, id=ce_id, traceparent=traceparent, tracestate=tracestate
        )
        if len(value) > MAX_PAYLOAD_BYTES:
            # Never into the outbox: the relay could not send it. The handler fails,
            # and the message it was handling is dead-lettered saying why.
            raise PayloadTooLarge(
                f"{payload.CE_TYPE} for {topic} is {len(value)} bytes, "
                f"over the limit of {MAX_PAYLOAD_BYTES} bytes"
            )
        self.pending.append(OutgoingMessage(topic, key.encode(), value, headers))
        return ce_id

    def publish_raw(self, message: OutgoingMessage) -> None:
        self.pending.append(message)

    def flush(self) -> None:
        """Write the recorded messages into the outbox table (same transaction)."""
        write_outbox(self.conn, self.pending)
        self.pending.clear()


def write_outbox(conn: Connection, messages: Sequence[OutgoingMessage]) -> None:
    """Insert these messages into the outbox, in order, in one statement."""
    if not messages:
        return
    now = time.time()
    conn.execute(
        _OUTBOX_INSERT,
        [
            {
                "topic": m.topic,
                "key": m.key,
                "value": m.value,
                "headers": [[k, v.decode("latin-1")] for k, v in m.headers],
                "created_at": now,
            }
            for m in messages
        ],
    )


# (ce_source, ce_id): what makes a message the same message (CloudEvents 1.0).
MessageId = tuple[str, str]

# Inbox rows migrated from the inbox keyed by ce_id alone have no source: such a row
# stands for its id from any source, so a message handled before the upgrade and
# redelivered after it is still a duplicate.
LEGACY_SOURCE = ""


def message_id(envelope: Envelope) -> MessageId:
    """A message's identity: its source and its id."""
    return envelope.source, envelope.id


_SEEN_BEFORE = sa.select(inbox.c.source, inbox.c.message_id).where(
    inbox.c.consumer == sa.bindparam("consumer"),
    inbox.c.message_id.in_(sa.bindparam("ids", expanding=True)),
)


def seen_before(conn: Connection, consumer: str, messages: Sequence[MessageId]) -> set[MessageId]:
    """Which of these (source, id) messages this consumer has already processed."""
    if not messages:
        return set()
    ids = list({i for _, i in messages})
    rows = conn.execute(_SEEN_BEFORE, {"consumer": consumer, "ids": ids})
    recorded = {(r[0], r[1]) for r in rows}
    return {
        (source, i)
        for source, i in messages
        if (source, i) in recorded or (LEGACY_SOURCE, i) in recorded
    }


def record_received(conn: Connection, consumer: str, message: MessageId, topic: str) -> bool:
    """Write the inbox record of a consumed message; False if it was there already
    (another member handled it, e.g. during a rebalance)."""
    source, ce_id = message
    return insert_ignore(
        conn,
        inbox,
        {
            "consumer": consumer,
            "message_id": ce_id,
            "source": source,
            "topic": topic,
            "received_at": time.time(),
        },
    )


_INBOX_INSERT = inbox.insert()


def record_all_received(
    conn: Connection, consumer: str, messages: Sequence[tuple[MessageId, str]]
) -> None:
    """Write the inbox records of ((source, id), topic) pairs in one statement; a
    message recorded before fails the whole statement (IntegrityError)."""
    conn.execute(_INBOX_INSERT, _inbox_rows(consumer, messages, time.time()))


def _inbox_rows(
    consumer: str, messages: Sequence[tuple[MessageId, str]], now: float
) -> list[dict[str, object]]:
    """The inbox rows of ((source, id), topic) pairs, received ``now``."""
    return [
        {
            "consumer": consumer,
            "message_id": ce_id,
            "source": source,
            "topic": topic,
            "received_at": now,
        }
        for (source, ce_id), topic in messages
    ]


# PostgreSQL: the batch as three arrays, so the statement's text is the same whatever
# the batch's size. As a multi-row VALUES list (five parameters a message) the driver
# parsed a new text of thousands of placeholders for every batch: 4 ms for 500 messages.
_TAKE_NEW_PG = sa.text(
    "INSERT INTO inbox (consumer, message_id, source, topic, received_at) "
    "SELECT :consumer, m.id, m.source, m.topic, :now "
    "FROM unnest(CAST(:ids AS VARCHAR[]), CAST(:sources AS VARCHAR[]), "
    "CAST(:topics AS VARCHAR[])) AS m(id, source, topic) "
    "ON CONFLICT DO NOTHING RETURNING source, message_id"
)


def record_new_received(
    conn: Connection, consumer: str, messages: Sequence[tuple[MessageId, str]]
) -> set[MessageId]:
    """Write the inbox records of ((source, id), topic) pairs the inbox does not hold
    yet, in one statement, and return those it wrote: the messages to handle. Unlike
    ``seen_before`` it does not read an unkeyed inbox row (``LEGACY_SOURCE``) as any
    source's: for a database whose inbox was keyed by source from the start."""
    if not messages:
        return set()
    now = time.time()
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            _TAKE_NEW_PG,
            {
                "consumer": consumer,
                "now": now,
                "ids": [ce_id for (_, ce_id), _ in messages],
                "sources": [source for (source, _), _ in messages],
                "topics": [topic for _, topic in messages],
            },
        )
    else:
        rows = conn.execute(
            insert_new_statement(conn.dialect.name, inbox),
            _inbox_rows(consumer, messages, now),
        )
    return {(r.source, r.message_id) for r in rows}


class Sender(Protocol):
    async def send(
        self, topic: str, value: bytes | None = ..., key: bytes | None = ..., headers: Any = ...
    ) -> asyncio.Future[Any]: ...


# Errors about the record itself, which no retry can fix: the client refused it
# (too large for max_request_size, no key and no value, a bad type) or the broker
# did (over the topic's max.message.bytes, a corrupt record, an invalid topic name).
# Anything else (timeouts, a broker down, missing rights) is the producer's or the
# cluster's trouble: the row stays and is sent once that passes.
_UNSENDABLE: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTopicError,
    AssertionError,
    TypeError,
    ValueError,
)


def unsendable(error: BaseException | None) -> bool:
    """Whether a send failed because of the record itself (park it) rather than
    the producer or the cluster (keep it and try again)."""
    return isinstance(error, _UNSENDABLE)


async def send_rows(producer: Sender, rows: Sequence[Any]) -> list[BaseException | None]:
    """Send outbox rows in order and wait until the broker answered for each; return
    each row's error (None: acknowledged). One row's failure never stops the others.
    Each send is a ``publish <topic>`` span continuing the trace stored with its row."""
    outcomes: list[BaseException | None] = [None] * len(rows)
    futures: list[tuple[int, asyncio.Future[Any]]] = []
    for i, r in enumerate(rows):
        headers = [(k, v.encode("latin-1")) for k, v in r.headers]
        span, headers = telemetry.start_publish(r.topic, headers, r.key)
        try:
            future = await producer.send(r.topic, value=r.value, key=r.key, headers=headers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # refused before it left: this row only
            telemetry.end(span, exc)
            outcomes[i] = exc
            continue
        telemetry.end_when_sent(span, future)
        futures.append((i, future))
    answers = await asyncio.gather(*(f for _, f in futures), return_exceptions=True)
    for (i, _), answer in zip(futures, answers, strict=True):
        if isinstance(answer, asyncio.CancelledError):
            raise answer
        if isinstance(answer, BaseException):
            outcomes[i] = answer
        else:  # counted here, where the broker acknowledged it, not in its span
            metrics.published(rows[i].topic)
    return outcomes


def park(conn: Connection, rows: Sequence[Any], errors: Sequence[BaseException]) -> None:
    """Move rows that can never be sent from the outbox to ``outbox_parked``, whole,
    with the error; they are counted, logged, and listed by `podium outbox parked`."""
    if not rows:
        return
    now = time.time()
    conn.execute(
        outbox_parked.insert(),
        [
            {
                "outbox_id": r.id,
                "topic": r.topic,
                "key": r.key,
                "value": r.value,
                "headers": r.headers,
                "created_at": r.created_at,
                "parked_at": now,
                "error_type": type(e).__name__,
                "error": str(e)[:2000] or type(e).__name__,
            }
            for r, e in zip(rows, errors, strict=True)
        ],
    )
    conn.execute(outbox.delete().where(outbox.c.id.in_([r.id for r in rows])))
    for r, e in zip(rows, errors, strict=True):
        metrics.outbox_parked(r.topic, type(e).__name__)
        log.error(
            "outbox row parked: it can never be sent; the rows behind it go on",
            outbox_id=r.id,
            topic=r.topic,
            bytes=len(r.key or b"") + len(r.value or b""),
            error_type=type(e).__name__,
            error=str(e)[:500],
        )


@dataclass(frozen=True, slots=True)
class Settled:
    """What became of one batch of rows: sent, parked, or kept for another try."""

    sent: list[Any]
    parked: list[tuple[Any, BaseException]]
    kept: list[tuple[Any, BaseException]]

    @property
    def progress(self) -> int:
        return len(self.sent) + len(self.parked)


def settle(rows: Sequence[Any], outcomes: Sequence[BaseException | None]) -> Settled:
    """Sort rows by their send outcome."""
    result = Settled([], [], [])
    for r, error in zip(rows, outcomes, strict=True):
        if error is None:
            result.sent.append(r)
        elif unsendable(error):
            result.parked.append((r, error))
        else:
            result.kept.append((r, error))
    return result


class RelayStalled(Exception):
    """No row of a batch could be sent, for reasons that may pass (broker down)."""


class OutboxRelay:
    """Publishes committed outbox rows and deletes them once acknowledged; parks
    rows that can never be sent, so they never hold back the rows behind them."""

    def __init__(
        self, engine: Engine, producer: Sender, *, sweep_interval_s: float = 1.0, batch: int = 1000
    ) -> None:
        self._engine = engine
        # PostgreSQL's round trips leave the event loop, on a thread of the relay's own
        # (podium_shared.dbthread): it sends the previous batch while the next is written.
        self._db = DbThread(threaded=off_loop(engine.dialect.name), name="podium-relay")
        self._producer = producer
        self._wake = asyncio.Event()
        self._sweep_interval_s = sweep_interval_s
        self._batch = batch
        self.published = 0
        self.parked = 0
        self._stopping = False

    def notify(self) -> None:
        """Wake the relay: a transaction with outbox rows has just committed."""
        self._wake.set()

    def stop(self) -> None:
        """End ``run`` after the batch in hand, rather than cancelling it: a batch
        cancelled between the broker's acknowledgement and the delete is sent
        again at shutdown, a second copy of every one of its records (seen on
        Apache Kafka: a dead letter copied twice when the router was restarted)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            # On timeout this is the sweep: publish whatever a crash or a failed send left.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sweep_interval_s)
            self._wake.clear()
            try:
                while not self._stopping and await self.publish_pending():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; rows stay for the next sweep")
                await asyncio.sleep(self._sweep_interval_s)

    async def publish_pending(self) -> int:
        """Send up to one batch of rows in id order; return how many left the outbox
        (sent or parked). Raises ``RelayStalled`` when none could, for now."""
        rows = await self._db.run(self._pending)
        if not rows:
            return 0
        done = settle(rows, await send_rows(self._producer, rows))
        await self._db.run(self._settle_rows, done)
        return self._count(done)

    def _pending(self) -> Sequence[Any]:
        """Up to one batch of rows to send, in id order."""
        with self._engine.connect() as conn:
            return conn.execute(sa.select(outbox).order_by(outbox.c.id).limit(self._batch)).all()

    def _settle_rows(self, done: Settled) -> None:
        """Delete the rows sent and park those that never will be, in one transaction."""
        with self._engine.begin() as conn:
            if done.sent:
                conn.execute(outbox.delete().where(outbox.c.id.in_([r.id for r in done.sent])))
            park(conn, [r for r, _ in done.parked], [e for _, e in done.parked])

    def _count(self, done: Settled) -> int:
        self.published += len(done.sent)
        self.parked += len(done.parked)
        if not done.progress and done.kept:
            _, error = done.kept[0]
            raise RelayStalled(f"{len(done.kept)} row(s) not sent: {error!r}") from error
        return done.progress
