"""DLQ topics outlive the fix: long, configurable retention and, when the replication
factor allows, min.insync.replicas (issue 12, item 11)."""

from __future__ import annotations

import pytest
import yaml

from podium.infra import render_topics_yaml
from podium_contracts import asyncapi
from podium_shared import Settings, Topics
from podium_shared.topics import DLQ_RETENTION_MS, POOL_STATUS_RETENTION_MS, dlq_configs


def test_dlq_topics_keep_records_for_90_days_by_default_and_others_get_no_configs() -> None:
    specs = Topics("p").declarations()
    dlqs = [s for s in specs if s.name.endswith(".dlq")]
    assert dlqs and all(s.configs == {"retention.ms": "7776000000"} for s in dlqs)
    # The one other topic with a config: executors' status reports, worth an hour.
    status = Topics("p").pool_status
    assert [s.configs for s in specs if s.name == status] == [
        {"retention.ms": str(POOL_STATUS_RETENTION_MS)}
    ]
    assert all(s.configs == {} for s in specs if not s.name.endswith(".dlq") and s.name != status)
    assert DLQ_RETENTION_MS == 90 * 24 * 3600 * 1000
    assert Settings().dlq_retention_ms == DLQ_RETENTION_MS


def test_dlq_retention_is_configurable_down_to_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODIUM_DLQ_RETENTION_MS", "-1")
    settings = Settings()
    specs = Topics("p").declarations(dlq_retention_ms=settings.dlq_retention_ms)
    assert {s.configs["retention.ms"] for s in specs if s.name.endswith(".dlq")} == {"-1"}
    monkeypatch.setenv("PODIUM_DLQ_RETENTION_MS", "-2")
    with pytest.raises(ValueError, match="dlq_retention_ms"):
        Settings()


@pytest.mark.parametrize(("replicas", "min_insync"), [(1, None), (2, None), (3, "2"), (5, "4")])
def test_min_insync_replicas_only_where_the_replication_factor_allows(
    replicas: int, min_insync: str | None
) -> None:
    assert dlq_configs(1000, replicas).get("min.insync.replicas") == min_insync
    specs = Topics("p").declarations(replication_factor=replicas)
    assert {s.configs.get("min.insync.replicas") for s in specs if s.name.endswith(".dlq")} == {
        min_insync
    }


def test_topics_yaml_and_asyncapi_carry_the_dlq_retention() -> None:
    rows = yaml.safe_load(render_topics_yaml())["topics"]
    assert all(
        r["configs"] == {"retention.ms": str(DLQ_RETENTION_MS)}
        for r in rows
        if r["name"].endswith(".dlq")
    )
    assert asyncapi.DLQ_RETENTION_MS == DLQ_RETENTION_MS
    channels = asyncapi.render_document()["channels"]
    dlqs = [c for c in channels.values() if c["address"].endswith(asyncapi.DLQ_SUFFIX)]
    assert dlqs
    for c in dlqs:
        kafka = c["bindings"]["kafka"]
        assert kafka["topicConfiguration"] == {"retention.ms": DLQ_RETENTION_MS}
        assert kafka["partitions"] == 1
