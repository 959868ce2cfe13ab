"""The router's watchdog: a background loop that fails steps which outlived
their timeout (handing them to recovery) and tasks past their deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from sqlalchemy.engine import Engine

from podium_router.service import Router
from podium_shared import OutboxRelay, UnitOfWork
from podium_shared.dbthread import db_threads

log = structlog.get_logger(__name__)


def make_watchdog(
    router: Router, engine: Engine, interval_s: float = 0.5
) -> Callable[[OutboxRelay], Coroutine[Any, Any, None]]:
    # On the writes thread the consume loop uses (on PostgreSQL): the router's state and
    # the outbox see one transaction at a time, as on the event loop.
    db = db_threads(engine).writes

    def tick() -> int:
        with engine.begin() as conn:
            uow = UnitOfWork(conn, source="router")
            acted = router.watchdog(uow)
            uow.flush()
        return acted

    async def run(relay: OutboxRelay) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                acted = await db.run(tick)
            except Exception:
                log.exception("watchdog tick failed; trying again")
                continue
            if acted:
                log.info("watchdog acted", count=acted)
                relay.notify()

    return run
