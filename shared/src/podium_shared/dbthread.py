"""A service's database work off its event loop, on PostgreSQL: one thread per engine.

The loops call SQLAlchemy's synchronous API (docs/architecture.md, section 2). On
PostgreSQL each statement is a network round trip, and made on the event loop it
stalls everything else the process does meanwhile: Kafka heartbeats, the fetches
of other partitions, the executor's steps in flight, the relay. ``DbThread.run``
hands such a phase (a batch's inbox read, its write transaction, a relay's read or
delete) to a worker thread instead, and the loop goes on while it runs.

One thread for an engine's writes, not a pool: a service's transactions run one at
a time, in the order they were asked for, exactly as they did on the event loop, so
no handler meets another's transaction half done and no write overtakes an earlier
one. Beside it, one thread for the engine's reads ahead of a batch (``db_threads``)
and one per outbox relay, which only sends what has committed. The phase
runs in a copy of the caller's context (``contextvars``), so its spans and log
bindings are the caller's. A local SQLite file stays on the loop (``off_loop``):
its calls take microseconds, less than the hop to a thread, and an in-memory
SQLite database is one per thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, ParamSpec, TypeVar

from sqlalchemy.engine import Engine

__all__ = ["DbThread", "DbThreads", "call_on_loop", "db_threads", "off_loop"]

P = ParamSpec("P")
T = TypeVar("T")

# The event loop whose work the current database thread is doing (unset elsewhere).
_local = threading.local()


def off_loop(dialect: str) -> bool:
    """Whether this database's calls leave the event loop: a server's (PostgreSQL)
    do, each one a round trip; a local SQLite file's stay (see the module's docstring
    and docs/architecture.md for the measurement)."""
    return dialect != "sqlite"


def call_on_loop(fn: Callable[[], object]) -> None:
    """Call ``fn`` on the event loop: at once when called there, or soon when called
    from a database thread (a handler waking an ``asyncio.Event`` from ``apply``:
    asyncio's objects are not thread-safe)."""
    loop: asyncio.AbstractEventLoop | None = getattr(_local, "loop", None)
    if loop is None:
        fn()
    else:
        loop.call_soon_threadsafe(fn)


def _in_thread(loop: asyncio.AbstractEventLoop, ctx: contextvars.Context, fn: Callable[[], T]) -> T:
    _local.loop = loop
    try:
        return ctx.run(fn)
    finally:
        _local.loop = None


class DbThread:
    """Runs database phases on one worker thread, in order (``threaded``), or in
    place on the event loop (not ``threaded``: SQLite)."""

    def __init__(self, *, threaded: bool, name: str = "podium-db") -> None:
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) if threaded else None
        )

    @property
    def threaded(self) -> bool:
        return self._executor is not None

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)``, on the database thread when there is one.

        Cancelled meanwhile, it still waits for ``fn`` to end before raising
        ``CancelledError``, as the call on the loop did (a thread cannot be
        interrupted): the caller never leaves a transaction running behind it, so a
        stop finishes the write in hand before the engine is disposed."""
        if self._executor is None:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, *args, **kwargs)
        work = functools.partial(_in_thread, loop, contextvars.copy_context(), call)
        future = loop.run_in_executor(self._executor, work)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            while not future.done():
                try:
                    await asyncio.wait([future])
                except asyncio.CancelledError:
                    continue
            if not future.cancelled():
                future.exception()  # retrieved: its outcome is the next try's concern
            raise

    def close(self) -> None:
        """Let the thread end once its queued work is done."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)


class DbThreads(NamedTuple):
    """An engine's two database threads."""

    reads: DbThread  # the inbox questions and read-ahead of fetched batches
    writes: DbThread  # every transaction that writes the outbox (one order per service)


_threads: weakref.WeakKeyDictionary[Engine, DbThreads] = weakref.WeakKeyDictionary()
_threads_lock = threading.Lock()


def db_threads(engine: Engine) -> DbThreads:
    """The threads of this engine, shared by every loop and timer using it.

    Writes keep one order, as they had on the event loop: no handler meets another's
    transaction half done, and outbox rows commit in id order, so a relay never sends
    a later row before an earlier one commits. A fetched batch's inbox question goes
    to the reads thread, so the executor starts its next steps while a batch is written."""
    with _threads_lock:
        found = _threads.get(engine)
        if found is None:
            threaded = off_loop(engine.dialect.name)
            found = _threads[engine] = DbThreads(
                DbThread(threaded=threaded, name="podium-db-reads"),
                DbThread(threaded=threaded, name="podium-db-writes"),
            )
            weakref.finalize(engine, found.reads.close)
            weakref.finalize(engine, found.writes.close)
        return found
