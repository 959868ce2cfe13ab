"""Retention: when an entry expires, and the background purge of what has."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy.engine import Engine

from podium_memory.settings import MemorySettings
from podium_memory.store import MemoryStore

log = structlog.get_logger(__name__)


def expires_at(
    settings: MemorySettings, kind: str, now: float, requested_ttl_s: float | None = None
) -> float | None:
    """The expiry of a new entry: the scope kind's TTL, shortened by a requested one."""
    ttls = [t for t in (settings.ttl_for(kind), requested_ttl_s) if t is not None]
    return now + min(ttls) if ttls else None


def purge_once(engine: Engine, settings: MemorySettings, now: float | None = None) -> int:
    """Delete expired entries in short transactions until none are left; return how many."""
    now = time.time() if now is None else now
    total = 0
    while True:
        with engine.begin() as conn:
            n = MemoryStore(conn).purge_expired(
                now, batch=settings.purge_batch, owners_before=now - settings.task_owner_ttl_s
            )
        total += n
        if n < settings.purge_batch:
            return total


def purge_task(engine: Engine, settings: MemorySettings) -> Callable[[Any], Awaitable[None]]:
    """A ServiceSpec background factory: purge every ``purge_interval_s``, off the event loop."""

    async def run(_relay: Any) -> None:
        while True:
            try:
                purged = await asyncio.to_thread(purge_once, engine, settings)
                if purged:
                    log.info("expired memory purged", entries=purged)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("memory purge failed; trying again next interval")
            await asyncio.sleep(settings.purge_interval_s)

    return run
