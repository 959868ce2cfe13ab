"""The executor's composition root: one pool per process."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from sqlalchemy.engine import Engine

from podium_executor.breaker import Breakers
from podium_executor.capabilities import Capability, Resources, discover
from podium_executor.handlers import Ran, make_handler
from podium_executor.ledger import Ledger
from podium_executor.migrations import HISTORY
from podium_executor.ratelimit import PoolRateLimit
from podium_executor.service import Executor
from podium_executor.settings import ExecutorSettings
from podium_shared import Handler, Settings, Topics
from podium_shared.migrations import open_database


@dataclass
class ExecutorApp:
    """Everything one replica runs, built from settings."""

    pool: str
    group: str
    topic: str
    pools: tuple[str, ...]
    engine: Engine
    executor: Executor
    handler: Handler[Ran]
    http: httpx.AsyncClient
    settings: ExecutorSettings

    async def aclose(self) -> None:
        await self.http.aclose()
        self.engine.dispose()


def build(
    settings: Settings,
    executor_settings: ExecutorSettings | None = None,
    capabilities: dict[str, Capability] | None = None,
) -> ExecutorApp:
    xs = executor_settings or ExecutorSettings(pool=settings.pool)
    if xs.pool != settings.pool:
        settings = settings.model_copy(update={"pool": xs.pool})
    topics = Topics(settings.topic_prefix)
    engine = open_database(settings.database_url("executor"), HISTORY)
    http = httpx.AsyncClient(follow_redirects=False)
    executor = Executor(
        capabilities if capabilities is not None else discover(Resources(xs, http)),
        topics,
        ledger=Ledger(engine),
        breakers=Breakers(xs.breaker_failures, xs.breaker_cooldown_s),
        rate_limit=(
            PoolRateLimit(engine, xs.pool, xs.rate_limit_per_s, xs.rate_limit_burst)
            if xs.rate_limit_per_s
            else None
        ),
        default_timeout_s=xs.default_timeout_s,
    )
    return ExecutorApp(
        pool=xs.pool,
        group=topics.group("executor", xs.pool),
        topic=topics.steps(xs.pool),
        pools=tuple(sorted({"default", "memory", xs.pool})),
        engine=engine,
        executor=executor,
        handler=make_handler(executor),
        http=http,
        settings=xs,
    )
