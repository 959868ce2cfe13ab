"""Waiting on events in integration tests: poll a condition until it holds or a
deadline passes, never a fixed sleep that hopes the event came in time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import sqlalchemy as sa

from podium_shared.db import outbox


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout_s: float,
    what: str = "the condition",
    interval_s: float = 0.05,
) -> None:
    """Return as soon as ``condition()`` (plain or awaitable) is true; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout_s} s"
        await asyncio.sleep(interval_s)


def outbox_empty(database_url: str) -> Callable[[], bool]:
    """Whether a service's outbox is empty: everything it committed has been published
    (its relay deletes a row once the broker acknowledged it)."""

    def check() -> bool:
        engine = sa.create_engine(database_url)
        try:
            with engine.connect() as conn:
                return (
                    conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar_one() == 0
                )
        finally:
            engine.dispose()

    return check
