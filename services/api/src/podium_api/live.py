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
every ``heartbeat_s`` seconds so proxies and clients know it is alive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine, RowMapping
from starlette.concurrency import run_in_threadpool

from podium_api.queries import ChangeFilter, changes_after
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


def frame(seq: int, data: str) -> bytes:
    # A run summary is one line of JSON: no newline can end the data field early.
    return f"id: {seq}\nevent: run\ndata: {data}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Stream:
    engine: Engine
    changes: Changes
    render: Callable[[RowMapping], str]  # a run's row -> its summary's JSON
    heartbeat_s: float = 15.0
    poll_s: float = 2.0
    batch: int = 100

    def _read(self, who: Principal, f: ChangeFilter, after: int) -> list[RowMapping]:
        with self.engine.connect() as conn:
            return changes_after(conn, who, f, after, limit=self.batch)

    async def events(self, who: Principal, f: ChangeFilter, after: int) -> AsyncIterator[bytes]:
        """The stream's bytes: changes after ``after``, then each as it commits."""
        loop = asyncio.get_running_loop()
        cursor = after
        sent_at = loop.time()
        yield b"retry: 2000\n\n"
        while True:
            woken = self.changes.waiter()
            rows = await run_in_threadpool(self._read, who, f, cursor)
            for row in rows:
                cursor = row["seq"]
                yield frame(cursor, self.render(row))
            if rows:
                sent_at = loop.time()
                if len(rows) == self.batch:
                    continue  # more are waiting
            if self.changes.closed:
                return  # what was committed is sent; the client reconnects elsewhere
            quiet = loop.time() - sent_at
            if quiet >= self.heartbeat_s:
                yield HEARTBEAT
                sent_at, quiet = loop.time(), 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(self.poll_s, self.heartbeat_s - quiet))
