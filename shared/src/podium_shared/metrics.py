"""Prometheus metrics, defined in one place, served per process on
``PODIUM_METRICS_PORT`` (0, the default, serves nothing).

Every recording function swallows its own errors: a metric can never break a
send or a consume.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = structlog.get_logger(__name__)

MESSAGES = Counter(
    "podium_messages", "Messages consumed, per service and topic", ["service", "topic"]
)
DEAD_LETTERS = Counter(
    "podium_dead_letters",
    "Consumed messages sent to their DLQ (errors), per topic, reason and error type",
    ["service", "topic", "reason", "error_type"],
)
DUPLICATES = Counter(
    "podium_messages_duplicate",
    "Consumed messages skipped because the inbox had taken their source and id before",
    ["service", "topic"],
)
PUBLISHED = Counter("podium_messages_published", "Messages sent by the outbox relay", ["topic"])
OUTBOX_PARKED = Counter(
    "podium_outbox_parked",
    "Outbox rows the relay could never send (too large, malformed), set aside with "
    "their error so the rows behind them go on; list them with `podium outbox parked`",
    ["topic", "error_type"],
)
CONSUMER_LAG = Gauge(
    "podium_consumer_lag",
    "Records not yet fetched: highwater minus position, per group and partition",
    ["group", "topic", "partition"],
)
STEP_SECONDS = Histogram(
    "podium_step_duration_seconds",
    "Time to run one step, per capability, pool and outcome",
    ["capability", "pool", "outcome"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
STEP_COST = Counter("podium_step_cost_usd", "Cost reported by steps", ["capability", "pool"])
STEP_TOKENS = Counter("podium_step_tokens", "Tokens used by steps", ["capability", "pool", "kind"])
RETRIES = Counter(
    "podium_retries_scheduled",
    "Retries scheduled by recovery",
    ["capability", "pool", "error_type"],
)
ABANDONED = Counter(
    "podium_steps_abandoned",
    "Steps recovery gave up on (dead-lettered)",
    ["capability", "pool", "error_type"],
)


def _safe(what: str, fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        log.debug("metric failed", metric=what, exc_info=True)


def consumed(service: str, topic: str) -> None:
    _safe("messages", lambda: MESSAGES.labels(service, topic).inc())


def dead_lettered(service: str, topic: str, reason: str, error_type: str) -> None:
    _safe("dead_letters", lambda: DEAD_LETTERS.labels(service, topic, reason, error_type).inc())


def duplicate(service: str, topic: str) -> None:
    _safe("duplicates", lambda: DUPLICATES.labels(service, topic).inc())


def published(topic: str, count: int = 1) -> None:
    _safe("published", lambda: PUBLISHED.labels(topic).inc(count))


def outbox_parked(topic: str, error_type: str) -> None:
    _safe("outbox_parked", lambda: OUTBOX_PARKED.labels(topic, error_type).inc())


def step_ran(
    capability: str,
    pool: str,
    outcome: str,
    seconds: float,
    *,
    cost_usd: float = 0.0,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
) -> None:
    """One step finished: its latency, and its cost and tokens if any."""

    def record() -> None:
        STEP_SECONDS.labels(capability, pool, outcome).observe(seconds)
        if cost_usd:
            STEP_COST.labels(capability, pool).inc(cost_usd)
        if prompt_tokens:
            STEP_TOKENS.labels(capability, pool, "prompt").inc(prompt_tokens)
        if completion_tokens:
            STEP_TOKENS.labels(capability, pool, "completion").inc(completion_tokens)

    _safe("step", record)


def retry_scheduled(capability: str, pool: str, error_type: str) -> None:
    _safe("retries", lambda: RETRIES.labels(capability, pool, error_type).inc())


def step_abandoned(capability: str, pool: str, error_type: str) -> None:
    _safe("abandoned", lambda: ABANDONED.labels(capability, pool, error_type).inc())


def serve(port: int, host: str = "127.0.0.1") -> int | None:
    """Serve /metrics on ``port`` (0: not at all); returns the port, or None."""
    if not port:
        return None
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.warning("metrics endpoint not started", port=port, error=str(exc))
        return None
    log.info("metrics endpoint", url=f"http://{host}:{port}/metrics")
    return port


async def update_lag(consumer: Any, group: str) -> None:
    """Set the lag gauge of every assigned partition (highwater - position)."""
    for tp in list(consumer.assignment()):
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue  # nothing fetched from it yet
        position = await asyncio.wait_for(consumer.position(tp), 1.0)
        CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(max(highwater - position, 0))


async def watch_lag(consumer: Any, group: str, interval_s: float = 1.0) -> None:
    """Background task: refresh the consumer lag gauges until cancelled."""
    task = asyncio.current_task()
    while True:
        with contextlib.suppress(Exception):
            await update_lag(consumer, group)
        if task is not None and task.cancelling():
            # A cancel that came as a revoked partition's position failed is raised by
            # asyncio.wait_for (3.11) as that error, suppressed above: stop anyway.
            raise asyncio.CancelledError
        await asyncio.sleep(interval_s)
