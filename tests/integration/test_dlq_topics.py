"""DLQ topics are created on the real broker with their retention (issue 12, item 11)."""

from __future__ import annotations

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from podium_shared import Settings, Topics
from podium_shared.kafka import ensure_topics
from tests.conftest import unique_prefix

pytestmark = pytest.mark.integration


async def topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics]
        )
    finally:
        await admin.close()
    out: dict[str, dict[str, str]] = {}
    for response in responses:
        for _code, _msg, _type, name, entries in response.resources:
            out[name] = {e[0]: e[1] for e in entries}
    return out


async def test_dlq_topics_are_created_with_long_configurable_retention(
    kafka_bootstrap: str,
) -> None:
    settings = Settings(
        kafka_bootstrap=kafka_bootstrap, topic_prefix=unique_prefix(), dlq_retention_ms=-1
    )
    topics = Topics(settings.topic_prefix)
    specs = topics.declarations(("default",), dlq_retention_ms=settings.dlq_retention_ms)
    await ensure_topics(settings, specs)
    dlq, plain = topics.dlq(topics.tasks), topics.tasks
    configs = await topic_configs(kafka_bootstrap, [dlq, plain])
    assert configs[dlq]["retention.ms"] == "-1"
    assert configs[plain].get("retention.ms") != "-1"
