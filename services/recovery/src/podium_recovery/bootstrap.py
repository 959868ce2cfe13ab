"""Recovery's composition root."""

from __future__ import annotations

from podium_shared import ServiceSpec, Settings, Topics, make_engine

from podium_recovery.handlers import make_handler
from podium_recovery.service import Recovery
from podium_recovery.state import metadata


def build(settings: Settings) -> ServiceSpec:
    topics = Topics(settings.topic_prefix)
    return ServiceSpec(
        name="recovery",
        group=f"{settings.topic_prefix}-recovery",
        topics=[topics.step_failures],
        handler=make_handler(Recovery(topics)),
        engine=make_engine(settings.database_url("recovery"), metadata),
    )
