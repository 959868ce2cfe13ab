"""Runs one service process: topics, clients, relay and consume loop, with a
readiness file and a clean shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiokafka import ConsumerRebalanceListener, TopicPartition
from sqlalchemy.engine import Engine

from podium_shared import metrics, telemetry
from podium_shared.consumer import ConsumeLoop, Handler
from podium_shared.kafka import ensure_topics, make_consumer, make_producer
from podium_shared.outbox import OutboxRelay
from podium_shared.settings import Settings
from podium_shared.topics import Topics

log = structlog.get_logger(__name__)


@dataclass
class ServiceSpec:
    """What a service's bootstrap hands to the runtime."""

    name: str
    group: str
    topics: list[str]
    handler: Handler[Any]
    engine: Engine
    pools: tuple[str, ...] = ("default", "memory")
    background: list[Any] = field(default_factory=list)  # extra coroutine factories


class _ReadyOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ready_file: Path | None) -> None:
        self._ready_file = ready_file

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions assigned", partitions=sorted(f"{t.topic}[{t.partition}]" for t in assigned)
        )
        if self._ready_file and not self._ready_file.exists():
            self._ready_file.parent.mkdir(parents=True, exist_ok=True)
            self._ready_file.write_text("ready\n")


def freeze_startup_heap() -> None:
    """Put what start-up allocated (modules, tables, models, clients) out of the
    collector's reach. Those objects live as long as the process, yet every full
    collection would scan them again: in the executor under load that was a
    50 to 70 ms stop of the event loop a few times a minute, which holds back every
    step in flight at that moment. Call once, when the service is about to run."""
    gc.collect()
    gc.freeze()


def ready_file(settings: Settings, instance: str) -> Path:
    return settings.home / "run" / f"{instance}.ready"


async def run_service(
    settings: Settings, spec: ServiceSpec, *, instance: str | None = None
) -> None:
    """Run until SIGTERM/SIGINT; then stop consuming, drain the outbox, and exit."""
    # One readiness file per process, so replicas of a service never share one.
    instance = instance or f"{spec.name}-{os.getpid()}"
    observability = telemetry.TelemetrySettings()
    telemetry.configure_tracing(spec.name, settings.home, observability)
    metrics.serve(observability.metrics_port, observability.metrics_host)
    topics = Topics(settings.topic_prefix)
    await ensure_topics(settings, topics.declarations(spec.pools))
    ready = ready_file(settings, instance)
    ready.unlink(missing_ok=True)

    producer = make_producer(settings, client_id=f"podium-{instance}")
    consumer = make_consumer(settings, group_id=spec.group, client_id=f"podium-{instance}")
    consumer.subscribe(spec.topics, listener=_ReadyOnAssign(ready))
    await producer.start()
    await consumer.start()
    relay = OutboxRelay(spec.engine, producer)
    loop = ConsumeLoop(
        consumer=consumer,
        engine=spec.engine,
        relay=relay,
        handler=spec.handler,
        group=spec.group,
        service=spec.name,
    )
    stop = asyncio.Event()
    aio = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        aio.add_signal_handler(sig, stop.set)

    tasks = [
        asyncio.create_task(loop.run(), name="consume"),
        asyncio.create_task(relay.run(), name="relay"),
        asyncio.create_task(metrics.watch_lag(consumer, spec.group), name="lag"),
    ]
    tasks += [asyncio.create_task(factory(relay)) for factory in spec.background]
    freeze_startup_heap()
    log.info("service started", topics=spec.topics, group=spec.group)
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t
    crashed = [t for t in done if t is not stopper and t.exception() is not None]
    # What was committed to the outbox is sent now; anything left goes on the next start.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(relay.publish_pending(), 5)
    await consumer.stop()
    await producer.stop()
    ready.unlink(missing_ok=True)
    spec.engine.dispose()
    telemetry.shutdown()
    log.info("service stopped", handled=loop.stats.handled, dead_lettered=loop.stats.dead_lettered)
    if crashed:
        exc = crashed[0].exception()
        assert exc is not None
        raise exc
