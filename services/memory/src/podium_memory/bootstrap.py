"""The memory service's composition root."""

from __future__ import annotations

from podium_memory.conversation import Summarizer
from podium_memory.handlers import make_handler
from podium_memory.migrations import HISTORY
from podium_memory.retention import purge_task
from podium_memory.service import Memory
from podium_memory.settings import MemorySettings
from podium_shared import ServiceSpec, Settings, Topics
from podium_shared.migrations import open_database
from podium_shared.startup import read_settings


def build(
    settings: Settings,
    memory_settings: MemorySettings | None = None,
    summarizer: Summarizer | None = None,
) -> ServiceSpec:
    topics = Topics(settings.topic_prefix)
    memory_settings = memory_settings or read_settings(MemorySettings)
    engine = open_database(settings.database_url("memory"), HISTORY)
    return ServiceSpec(
        name="memory",
        group=topics.group("memory"),
        topics=[topics.steps("memory"), topics.task_events],
        handler=make_handler(Memory(topics, memory_settings, summarizer)),
        engine=engine,
        background=[purge_task(engine, memory_settings)],
    )
