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
from sqlalchemy.engine import Connection, Engine

from podium_contracts import Contract, Envelope, Headers, encode, new_id
from podium_shared import telemetry
from podium_shared.db import inbox, insert_ignore, outbox

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
    now = time.time()
    conn.execute(
        _INBOX_INSERT,
        [
            {
                "consumer": consumer,
                "message_id": ce_id,
                "source": source,
                "topic": topic,
                "received_at": now,
            }
            for (source, ce_id), topic in messages
        ],
    )


class Sender(Protocol):
    async def send(
        self, topic: str, value: bytes | None = ..., key: bytes | None = ..., headers: Any = ...
    ) -> asyncio.Future[Any]: ...


async def send_rows(producer: Sender, rows: Sequence[Any]) -> None:
    """Send outbox rows in order and wait until the broker acknowledged all of them.
    Each send is a ``publish <topic>`` span continuing the trace stored with its row."""
    futures = []
    for r in rows:
        headers = [(k, v.encode("latin-1")) for k, v in r.headers]
        span, headers = telemetry.start_publish(r.topic, headers, r.key)
        future = await producer.send(r.topic, value=r.value, key=r.key, headers=headers)
        telemetry.end_when_sent(span, future)
        futures.append(future)
    await asyncio.gather(*futures)


class OutboxRelay:
    """Publishes committed outbox rows and deletes them once acknowledged."""

    def __init__(
        self, engine: Engine, producer: Sender, *, sweep_interval_s: float = 1.0, batch: int = 1000
    ) -> None:
        self._engine = engine
        self._producer = producer
        self._wake = asyncio.Event()
        self._sweep_interval_s = sweep_interval_s
        self._batch = batch
        self.published = 0

    def notify(self) -> None:
        """Wake the relay: a transaction with outbox rows has just committed."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            # On timeout this is the sweep: publish whatever a crash or a failed send left.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._sweep_interval_s)
            self._wake.clear()
            try:
                while await self.publish_pending():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox relay failed; rows stay for the next sweep")
                await asyncio.sleep(self._sweep_interval_s)

    async def publish_pending(self) -> int:
        """Send up to one batch of rows in id order; return how many were sent."""
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(outbox).order_by(outbox.c.id).limit(self._batch)).all()
        if not rows:
            return 0
        await send_rows(self._producer, rows)
        with self._engine.begin() as conn:
            conn.execute(outbox.delete().where(outbox.c.id.in_([r.id for r in rows])))
        self.published += len(rows)
        return len(rows)
