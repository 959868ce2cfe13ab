"""Durable retry timers in the recovery database.

``schedule`` writes a timer in the transaction that consumes the failure, so
the retry exists exactly when the failure's offset is committed. ``fire_due``
moves due timers into the outbox and deletes them in one transaction (rows
another replica holds are skipped on PostgreSQL), so a restart loses no
pending retry and fires none twice; the relay's possible resend carries the
same ``ce_id`` and the executor's inbox drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection, Engine

from podium_contracts import StepRequested, encode, new_id
from podium_recovery.state import timers
from podium_shared import OutboxRelay, OutgoingMessage, Topics, UnitOfWork
from podium_shared.dbthread import db_threads

log = structlog.get_logger(__name__)


class LostRace(RuntimeError):
    """Another replica fired some of the selected timers first; this transaction
    rolls back and the next tick selects again."""


def schedule(
    conn: Connection,
    topics: Topics,
    request: StepRequested,
    due_at: datetime,
    *,
    traceparent: str | None = None,
) -> str:
    """Store the retry ``request`` to fire at ``due_at``; returns its ce_id."""
    ce_id = new_id()
    value, headers = encode(request, source="recovery", id=ce_id, traceparent=traceparent)
    conn.execute(
        timers.insert().values(
            due_at=due_at.timestamp(),
            task_id=request.task_id,
            step_id=request.step_id,
            attempt=request.attempt,
            topic=topics.steps(request.pool),
            key=f"{request.task_id}/{request.step_id}".encode(),
            value=value,
            headers=[[k, v.decode("latin-1")] for k, v in headers],
            created_at=time.time(),
        )
    )
    return ce_id


def fire_due(conn: Connection, now: float, limit: int = 500) -> int:
    """Move the timers due by ``now`` into the outbox; return how many fired."""
    rows = conn.execute(
        sa.select(timers)
        .where(timers.c.due_at <= now)
        .order_by(timers.c.due_at, timers.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)  # PostgreSQL; SQLite serialises writers anyway
    ).all()
    if not rows:
        return 0
    uow = UnitOfWork(conn, source="recovery")
    for r in rows:
        uow.publish_raw(
            OutgoingMessage(
                r.topic, r.key, r.value, [(k, v.encode("latin-1")) for k, v in r.headers]
            )
        )
    uow.flush()
    deleted = conn.execute(timers.delete().where(timers.c.id.in_([r.id for r in rows]))).rowcount
    if deleted != len(rows):
        raise LostRace(f"{len(rows) - deleted} of {len(rows)} timers fired elsewhere")
    return len(rows)


def pending(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(timers)).scalar_one())


def next_due(conn: Connection) -> float | None:
    """When the earliest pending timer is due (epoch seconds), or None if there is none."""
    due = conn.execute(sa.select(sa.func.min(timers.c.due_at))).scalar_one()
    return None if due is None else float(due)


def round_wait_s(due: float | None, now: float, interval_s: float, idle_s: float) -> float:
    """How long the timer loop waits before its next round: until the earliest pending
    timer is due, but at least ``interval_s`` (so a timer fires at most that late and a
    timer that cannot fire is not retried in a busy loop) and at most ``idle_s`` (how
    long a timer another replica wrote to a shared database waits to be seen here, should
    that replica die). A timer this process schedules wakes the loop at once."""
    longest = max(interval_s, idle_s)
    if due is None:
        return longest
    return min(longest, max(interval_s, due - now))


def make_timer_loop(
    engine: Engine,
    *,
    interval_s: float = 0.1,
    idle_s: float = 1.0,
    batch: int = 500,
    clock: Callable[[], float] = time.time,
    wake: asyncio.Event | None = None,
) -> Callable[[OutboxRelay], Coroutine[Any, Any, None]]:
    """The background task that fires due timers (a ``ServiceSpec.background`` factory).
    Idle, it looks once per ``idle_s``, not once per ``interval_s`` (issue 18); ``wake``,
    set when this process schedules a timer, starts a round at once."""
    woken = asyncio.Event() if wake is None else wake
    db = db_threads(engine).writes  # PostgreSQL's round trips leave the event loop

    def fire() -> tuple[int, float | None]:
        with engine.begin() as conn:
            return fire_due(conn, clock(), batch), next_due(conn)

    async def run(relay: OutboxRelay) -> None:
        while True:
            woken.clear()  # before the round: a timer scheduled during it wakes the next
            try:
                fired, due = await db.run(fire)
                wait = round_wait_s(due, clock(), interval_s, idle_s)
            except LostRace as exc:
                log.debug("timers fired by another replica", detail=str(exc))
                fired, wait = 0, interval_s
            except Exception:
                log.exception("firing timers failed; trying again")
                fired, wait = 0, interval_s
            if fired:
                log.info("retries dispatched", count=fired)
                relay.notify()
                if fired == batch:
                    continue  # more may be due
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), wait)

    return run
