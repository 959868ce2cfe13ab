"""Runs one executor replica: the concurrent consume loop, the claiming relay,
a readiness file once partitions are assigned, and a graceful stop on
SIGTERM/SIGINT (in-flight steps finish within the grace period or are
released uncommitted, the outbox is drained)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import structlog
from aiokafka import TopicPartition

from podium_executor.bootstrap import ExecutorApp
from podium_executor.relay import ClaimingRelay
from podium_shared import Settings, Topics, metrics, telemetry
from podium_shared.concurrent_consumer import ConcurrentConsumeLoop, ReleaseOnRevoke
from podium_shared.kafka import ensure_topics, make_consumer, make_producer
from podium_shared.runtime import freeze_startup_heap, ready_file

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
    observability = telemetry.TelemetrySettings()
    telemetry.configure_tracing("executor", settings.home, observability)
    metrics.serve(observability.metrics_port, observability.metrics_host)
    await ensure_topics(settings, Topics(settings.topic_prefix).declarations(app.pools))
    ready = ready_file(settings, instance)
    ready.unlink(missing_ok=True)

    producer = make_producer(settings, client_id=f"podium-{instance}")
    consumer = make_consumer(settings, group_id=app.group, client_id=f"podium-{instance}")
    relay = ClaimingRelay(app.engine, producer, owner=instance, lease_s=xs.outbox_lease_s)
    loop = ConcurrentConsumeLoop(
        consumer=consumer,
        engine=app.engine,
        relay=relay,
        handler=app.handler,
        group=app.group,
        service="executor",
        concurrency=xs.concurrency,
        release_timeout_s=xs.shutdown_grace_s,
    )

    def mark_ready(_assigned: set[TopicPartition]) -> None:
        if not ready.exists():
            ready.parent.mkdir(parents=True, exist_ok=True)
            ready.write_text("ready\n")

    consumer.subscribe([app.topic], listener=ReleaseOnRevoke(loop, on_assigned=mark_ready))
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    aio = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        aio.add_signal_handler(sig, stop.set)

    consume = asyncio.create_task(loop.run(), name="consume")
    relaying = asyncio.create_task(relay.run(), name="relay")
    lag = asyncio.create_task(metrics.watch_lag(consumer, app.group), name="lag")
    freeze_startup_heap()
    log.info(
        "executor started",
        pool=app.pool,
        concurrency=xs.concurrency,
        capabilities=sorted(app.executor.capabilities),
    )
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, consume, relaying], return_when=asyncio.FIRST_COMPLETED)
    crashed = [t for t in done if t is not stopper and t.exception() is not None]
    released = await loop.shutdown(xs.shutdown_grace_s)
    for t in (consume, relaying, lag, stopper):
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t
    # What was committed to the outbox is sent now; anything left goes on the next sweep.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(relay.publish_pending(), 5)
    await consumer.stop()
    await producer.stop()
    ready.unlink(missing_ok=True)
    await app.aclose()
    telemetry.shutdown()
    log.info(
        "executor stopped",
        handled=loop.stats.handled,
        duplicates=loop.stats.duplicates,
        dead_lettered=loop.stats.dead_lettered,
        released=released,
    )
    if crashed:
        exc = crashed[0].exception()
        assert exc is not None
        raise exc
