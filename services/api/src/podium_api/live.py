"""Live updates: run changes as Server-Sent Events (``GET /v1/events``).

Every write of a run takes the next change number (``runs.seq``, see
``state.counters``). A stream sends the visible runs changed after its cursor, in
the order of their changes, each with its number as the event's ``id``; a client
that reconnects with ``Last-Event-ID`` resumes after the last one it got, so it
misses nothing and gets nothing twice. A run changed several times while a client
was away is sent once, as it is now.

The projection (and the commands) wake the streams through ``Changes.notify`` once
their transaction has committed; a stream also looks every ``poll_s`` seconds, so a
change whose wake-up was lost is late, never missed. A quiet stream sends a comment
every ``heartbeat_s`` seconds so proxies and clients know it is alive.

New dead letters come in the same stream as ``event: dead_letter`` (their numbers
are taken from the same sequence, see ``projection.dead_lettered``): the step's
task, step, DLQ topic, record id and error, in the order of their changes among
the runs'."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Engine, RowMapping
from starlette.concurrency import run_in_threadpool

from podium_api.queries import ChangeFilter, changes_after, dead_letters_after
from podium_api.tokens import Principal

HEARTBEAT = b": heartbeat\n\n"


class Changes:
    """Wakes the streams waiting on the service's event loop; ``notify`` may be called
    from any thread (a route's, or the loop's own while the projection commits: the
    wake-up runs after the code that called it, so after its commit)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._pending = False
        self.closed = False

    def notify(self) -> None:
        loop = self._loop
        if loop is None or self._pending or loop.is_closed():
            return  # nobody has waited yet, or a wake-up is already on its way
        self._pending = True
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        self._pending = False
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def waiter(self) -> asyncio.Event:
        """The event the next ``notify`` sets; take it before reading, so a change
        committed between the read and the wait still wakes the reader."""
        self._loop = asyncio.get_running_loop()
        if self._event is None:
            self._event = asyncio.Event()
        return self._event

    def close(self) -> None:
        """End every stream (the service is stopping); call on the loop's thread."""
        self.closed = True
        self._fire()


def frame(seq: int, data: str, event: str = "run") -> bytes:
    # A run summary is one line of JSON: no newline can end the data field early.
    return f"id: {seq}\nevent: {event}\ndata: {data}\n\n".encode()


def dead_letter_data(row: RowMapping) -> str:
    """A new dead letter's event data (one line of JSON)."""
    body: dict[str, Any] = {
        "topic": row["topic"],
        "id": row["record_id"],
        "task_id": row["task_id"],
        "step_id": row["step_id"],
        "tenant": row["tenant"],
        "workflow": row["workflow"],
        "error": row["error"],
        "at": datetime.fromtimestamp(row["at"], UTC).isoformat(),
    }
    return orjson.dumps(body).decode()


def merge(
    runs: list[RowMapping], dead: list[RowMapping], batch: int
) -> tuple[list[tuple[int, str, RowMapping]], bool]:
    """Both kinds of change in the order of their numbers, up to where both reads are
    complete (a full batch may have more after its last), and whether more wait."""
    events = sorted(
        [(r["seq"], "run", r) for r in runs] + [(d["seq"], "dead_letter", d) for d in dead],
        key=lambda e: e[0],
    )
    ends = [rows[-1]["seq"] for rows in (runs, dead) if len(rows) >= batch]
    if not ends:
        return events, False
    upto = min(ends)
    return [e for e in events if e[0] <= upto], True


@dataclass(frozen=True, slots=True)
class Stream:
    engine: Engine
    changes: Changes
    render: Callable[[RowMapping], str]  # a run's row -> its summary's JSON
    heartbeat_s: float = 15.0
    poll_s: float = 2.0
    batch: int = 100

    def _read(
        self, who: Principal, f: ChangeFilter, after: int
    ) -> tuple[list[tuple[int, str, RowMapping]], bool]:
        with self.engine.connect() as conn:
            runs = changes_after(conn, who, f, after, limit=self.batch)
            dead = dead_letters_after(conn, who, f, after, limit=self.batch)
        return merge(runs, dead, self.batch)

    async def events(self, who: Principal, f: ChangeFilter, after: int) -> AsyncIterator[bytes]:
        """The stream's bytes: changes after ``after``, then each as it commits."""
        loop = asyncio.get_running_loop()
        cursor = after
        sent_at = loop.time()
        yield b"retry: 2000\n\n"
        while True:
            woken = self.changes.waiter()
            rows, more = await run_in_threadpool(self._read, who, f, cursor)
            for seq, kind, row in rows:
                cursor = seq
                if kind == "run":
                    yield frame(seq, self.render(row))
                else:
                    yield frame(seq, dead_letter_data(row), "dead_letter")
            if rows:
                sent_at = loop.time()
                if more:
                    continue  # more are waiting
            if self.changes.closed:
                return  # what was committed is sent; the client reconnects elsewhere
            quiet = loop.time() - sent_at
            if quiet >= self.heartbeat_s:
                yield HEARTBEAT
                sent_at, quiet = loop.time(), 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(self.poll_s, self.heartbeat_s - quiet))
