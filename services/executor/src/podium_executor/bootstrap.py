"""The executor's composition root: one pool per process."""

from __future__ import annotations

from podium_shared import ServiceSpec, Settings, Topics, make_engine

from podium_executor.capabilities import BUILTINS, Capability
from podium_executor.handlers import make_handler
from podium_executor.service import Executor


def build(settings: Settings, capabilities: dict[str, Capability] | None = None) -> ServiceSpec:
    topics = Topics(settings.topic_prefix)
    pool = settings.pool
    return ServiceSpec(
        name="executor",
        group=f"{settings.topic_prefix}-executor-{pool}",
        topics=[topics.steps(pool)],
        handler=make_handler(Executor(capabilities or BUILTINS, topics)),
        engine=make_engine(settings.database_url("executor")),
        pools=tuple(sorted({"default", "memory", pool})),
    )
