"""The memory service's composition root."""

from __future__ import annotations

from podium_shared import ServiceSpec, Settings, Topics, make_engine

from podium_memory.handlers import make_handler
from podium_memory.service import Memory
from podium_memory.state import metadata


def build(settings: Settings) -> ServiceSpec:
    topics = Topics(settings.topic_prefix)
    return ServiceSpec(
        name="memory",
        group=f"{settings.topic_prefix}-memory",
        topics=[topics.steps("memory")],
        handler=make_handler(Memory(topics)),
        engine=make_engine(settings.database_url("memory"), metadata),
    )
