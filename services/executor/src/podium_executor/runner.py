"""Runs one executor replica: the concurrent consume loop, the claiming relay,
a readiness file once partitions are assigned, and a graceful stop on
SIGTERM/SIGINT (in-flight steps finish within the grace period or are
released uncommitted, the outbox is drained)."""

from __future__ import annotations

import asyncio
import os

import structlog

from podium_executor.bootstrap import ExecutorApp
from podium_executor.relay import ClaimingRelay
from podium_shared import Settings, Topics, metrics, telemetry
from podium_shared.concurrent_consumer import ConcurrentConsumeLoop, ReleaseOnRevoke
from podium_shared.runtime import (
    cancel_all,
    close_clients,
    mark_ready,
    open_clients,
    run_until_stopped,
)

log = structlog.get_logger(__name__)


def instance_name(pool: str) -> str:
    """What `podium.stack` waits for: ``executor-<pool>-<pid>.ready``."""
    return f"executor-{pool}-{os.getpid()}"


async def run_executor(
    settings: Settings, app: ExecutorApp, *, instance: str | None = None
) -> None:
    """Run until SIGTERM/SIGINT, then stop consuming, settle in-flight steps, drain the outbox."""
    xs = app.settings
    instance = instance or instance_name(app.pool)
    clients = await open_clients(
        settings, service="executor", instance=instance, group=app.group, pools=app.pools
    )
    relay = ClaimingRelay(app.engine, clients.producer, owner=instance, lease_s=xs.outbox_lease_s)
    loop = ConcurrentConsumeLoop(
        consumer=clients.consumer,
        engine=app.engine,
        relay=relay,
        handler=app.handler,
        group=app.group,
        service="executor",
        concurrency=xs.concurrency,
        release_timeout_s=xs.shutdown_grace_s,
        carries=Topics(settings.topic_prefix).carries,
    )
    clients.consumer.subscribe(
        [app.topic], listener=ReleaseOnRevoke(loop, on_assigned=lambda _: mark_ready(clients.ready))
    )
    await clients.producer.start()
    await clients.consumer.start()
    consume = asyncio.create_task(loop.run(), name="consume")
    relaying = asyncio.create_task(relay.run(), name="relay")
    lag = asyncio.create_task(metrics.watch_lag(clients.consumer, app.group), name="lag")
    log.info(
        "executor started",
        pool=app.pool,
        concurrency=xs.concurrency,
        capabilities=sorted(app.executor.capabilities),
    )
    crashed = await run_until_stopped([consume, relaying])
    released = await loop.shutdown(xs.shutdown_grace_s)
    await cancel_all([consume, relaying, lag])
    await close_clients(clients, relay)
    await app.aclose()
    telemetry.shutdown()
    log.info(
        "executor stopped",
        handled=loop.stats.handled,
        duplicates=loop.stats.duplicates,
        dead_lettered=loop.stats.dead_lettered,
        released=released,
    )
    if crashed is not None:
        raise crashed
