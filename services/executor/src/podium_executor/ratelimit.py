"""A pool's rate limit: at most ``rate`` capability calls per second on average,
bursts of up to ``burst``, across every replica of the pool.

The bucket lives in the pool's database, which its replicas share already (for
the effect ledger), so a quota of R calls/s stays R however many replicas run.
Taking a token is one conditional ``UPDATE`` that refills by the time elapsed and
takes one if there is one; the database serialises replicas. Inside a replica,
callers queue on a lock, so they wait in arrival order and only one of them at a
time asks the database. Replicas on several machines need their clocks in step
(NTP): the refill reads each caller's wall clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from podium_executor.state import rate_buckets
from podium_shared.db import insert_ignore

_NOW = sa.bindparam("now", type_=sa.Float)
_RATE = sa.bindparam("rate", type_=sa.Float)
_BURST = sa.bindparam("burst", type_=sa.Float)
# Tokens now: what was left plus the refill since, capped at the burst (a clock
# behind the last writer's refills nothing rather than taking tokens away).
_ELAPSED = sa.case((rate_buckets.c.updated_at < _NOW, _NOW - rate_buckets.c.updated_at), else_=0.0)
_REFILLED = sa.case(
    (rate_buckets.c.tokens + _ELAPSED * _RATE > _BURST, _BURST),
    else_=rate_buckets.c.tokens + _ELAPSED * _RATE,
)
_TAKE = (
    rate_buckets.update()
    .where(rate_buckets.c.pool == sa.bindparam("_pool"), _REFILLED >= 1)
    .values(
        tokens=_REFILLED - 1,
        updated_at=sa.case(
            (rate_buckets.c.updated_at < _NOW, _NOW), else_=rate_buckets.c.updated_at
        ),
    )
)
_LEFT = sa.select(_REFILLED).where(rate_buckets.c.pool == sa.bindparam("_pool"))


class PoolRateLimit:
    def __init__(
        self,
        engine: Engine,
        pool: str,
        rate: float,
        burst: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        self._engine = engine
        self._pool = pool
        self._clock = clock
        self._lock = asyncio.Lock()
        with engine.begin() as conn:
            insert_ignore(
                conn, rate_buckets, {"pool": pool, "tokens": self.burst, "updated_at": clock()}
            )

    async def acquire(self) -> None:
        """Take one token of the pool, waiting until one is there."""
        async with self._lock:
            while True:
                wait = self._take()
                if wait <= 0:
                    return
                await asyncio.sleep(wait)

    def _take(self) -> float:
        """Take a token: 0 when taken, else the seconds until one should be there."""
        params = {"_pool": self._pool, "now": self._clock(), "rate": self.rate, "burst": self.burst}
        with self._engine.begin() as conn:
            if conn.execute(_TAKE, params).rowcount == 1:
                return 0.0
            left = float(conn.execute(_LEFT, params).scalar_one())
        return max(0.001, (1 - left) / self.rate)
