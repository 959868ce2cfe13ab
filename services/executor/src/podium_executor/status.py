"""The replica's status report (``PoolStatusReported``), published every few seconds.

Breaker states live in each replica's memory and the rate limit in its settings;
the api may not read the executor's database, and nothing else on the topics tells
them, so each replica reports them on ``<prefix>.pool-status.v1``, keyed by replica,
through its outbox like every other message. The api reads the topic's tail when
asked (``GET /v1/pools``) and keeps each live replica's latest report."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy.engine import Engine

from podium_contracts import BreakerStatus, PoolStatusReported, RateLimitStatus
from podium_executor.breaker import Breakers
from podium_shared import OutboxRelay, Topics, UnitOfWork

log = structlog.get_logger(__name__)

SOURCE = "executor"


def replica_name(instance: str) -> str:
    """This replica's name in its reports: host and instance (``executor-<pool>-<pid>``)."""
    return f"{socket.gethostname()}/{instance}-{os.getpid()}"


def status_report(
    *,
    pool: str,
    replica: str,
    concurrency: int,
    breakers: Breakers | None,
    rate_per_s: float | None,
    burst: int | None,
    interval_s: float,
    now: datetime,
) -> PoolStatusReported:
    """The report of a replica as it is at ``now``."""
    circuits = breakers.snapshot() if breakers is not None else {}
    return PoolStatusReported(
        pool=pool,
        replica=replica,
        concurrency=concurrency,
        breakers={
            provider: BreakerStatus(state=state.value, failures=failures, retry_in_s=retry_in)
            for provider, (state, failures, retry_in) in sorted(circuits.items())
        },
        rate_limit=RateLimitStatus(
            per_s=rate_per_s,
            burst=(burst if burst is not None else max(1, int(rate_per_s))) if rate_per_s else None,
        ),
        interval_s=interval_s,
        reported_at=now,
    )


def status_reporter(
    engine: Engine,
    topics: Topics,
    report: Callable[[datetime], PoolStatusReported],
    interval_s: float,
) -> Callable[[OutboxRelay], Coroutine[Any, Any, None]]:
    """A background task of the runtime: a report at start, then one every ``interval_s``."""

    def publish(now: datetime) -> None:
        payload = report(now)
        with engine.begin() as conn:
            uow = UnitOfWork(conn, source=SOURCE)
            uow.publish(topics.pool_status, payload, key=payload.replica)
            uow.flush()

    async def run(relay: OutboxRelay) -> None:
        while True:
            try:
                publish(datetime.now(UTC))  # one small transaction, as the rate limit's
                relay.notify()
            except Exception:
                # A status report must never stop the replica's real work.
                log.warning("status report failed", exc_info=True)
            await asyncio.sleep(interval_s)

    return run
