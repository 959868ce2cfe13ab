"""The metrics the services record, and the Grafana dashboard that reads them."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from podium.stack import free_port
from podium_shared import metrics

pytestmark = pytest.mark.unit

DASHBOARD = Path(__file__).resolve().parents[2] / "infra" / "grafana" / "podium-dashboard.json"


def exported_names() -> set[str]:
    """Every sample name the registry exposes (counters as *_total, histograms as *_bucket…)."""
    names = set()
    for family in REGISTRY.collect():
        names |= {s.name for s in family.samples}
        names.add(family.name)
    return names


def test_step_cost_tokens_and_dead_letters_are_recorded() -> None:
    before = (
        REGISTRY.get_sample_value(
            "podium_step_duration_seconds_count",
            {"capability": "llm.chat", "pool": "p", "outcome": "completed"},
        )
        or 0
    )
    metrics.step_ran(
        "llm.chat", "p", "completed", 0.2, cost_usd=0.5, prompt_tokens=10, completion_tokens=5
    )
    metrics.dead_lettered("svc", "t.x", "invalid", "InvalidMessage")
    assert (
        REGISTRY.get_sample_value(
            "podium_step_duration_seconds_count",
            {"capability": "llm.chat", "pool": "p", "outcome": "completed"},
        )
        == before + 1
    )
    assert (
        REGISTRY.get_sample_value(
            "podium_step_tokens_total", {"capability": "llm.chat", "pool": "p", "kind": "prompt"}
        )
        or 0
    ) >= 10
    assert (
        REGISTRY.get_sample_value(
            "podium_dead_letters_total",
            {"service": "svc", "topic": "t.x", "reason": "invalid", "error_type": "InvalidMessage"},
        )
        or 0
    ) >= 1


def test_the_endpoint_serves_the_metrics() -> None:
    port = free_port()
    assert metrics.serve(port) == port
    metrics.consumed("svc", "t.served")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'podium_messages_total{service="svc",topic="t.served"}' in body
    assert metrics.serve(0) is None


def test_the_dashboard_reads_only_metrics_that_exist() -> None:
    metrics.retry_scheduled("c", "p", "e")
    metrics.step_abandoned("c", "p", "e")
    metrics.published("t")
    metrics.CONSUMER_LAG.labels("g", "t", "0").set(0)
    metrics.STEP_COST.labels("c", "p").inc(0)
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used = {
        name
        for p in panels
        for t in p["targets"]
        for name in re.findall(r"\b(podium_[a-z_]+)", t["expr"])
    }
    assert used, "no podium metric in the dashboard"
    assert used <= exported_names(), used - exported_names()
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("lag", "latency", "retries", "dlq", "cost", "tokens", "errors"):
        assert topic in titles
