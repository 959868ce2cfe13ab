"""Runs one service process: topics, clients, relay and consume loop, with a
readiness file and a clean shutdown on SIGTERM/SIGINT.

``serve`` is what every service's ``__main__`` calls: it reads the shared settings,
sets up logging, builds the service with its ``bootstrap.build`` and runs it with
``run_service`` on the event loop ``PODIUM_EVENT_LOOP`` names (``loop_factory``); a
bad setting or definition exits 2 with one line (``startup``).
A ``ServiceSpec`` says which consume loop to run: the sequential one (router, memory,
recovery), or with ``concurrency`` the concurrent one whose revoked partitions
finish or release their in-flight messages (the executor)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from sqlalchemy.engine import Engine

from podium_shared import blobs, metrics, secrets, telemetry
from podium_shared.claiming import ClaimingRelay
from podium_shared.concurrent_consumer import ConcurrentConsumeLoop, ReleaseOnRevoke
from podium_shared.consumer import ConsumeLoop, Handler
from podium_shared.idle import IdleBackoff, idle_policy
from podium_shared.kafka import (
    BrokerRefused,
    ensure_topics,
    make_consumer,
    make_producer,
    resolve_idempotence,
)
from podium_shared.logs import configure
from podium_shared.outbox import OutboxRelay, Sender
from podium_shared.settings import Settings
from podium_shared.shared_state import SharedStateGuard, UnsharedState
from podium_shared.startup import read_settings, refuse, refusing
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
    # Messages in flight at once; None runs the sequential loop. With a number, the
    # concurrent loop runs, and a revoked partition's messages get ``grace_s`` to finish.
    concurrency: int | None = None
    grace_s: float = 10.0
    # Claim outbox rows even on SQLite (the executor: ``podium up --executors N`` runs a
    # pool's replicas on one SQLite file). On PostgreSQL every service claims them.
    claim_outbox: bool = False
    outbox_lease_s: float | None = None  # a claim's lease; None: the shared setting
    # The instance name before ``-<pid>``: the readiness file is ``<instance>-<pid>.ready``.
    instance: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # logged at start
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # after the clients
    # False: poison is logged and skipped, not dead-lettered (the api reads others' topics).
    dead_letters: bool = True


def mark_ready(ready: Path) -> None:
    """Write the readiness file (what `podium.stack` and healthchecks wait for)."""
    if not ready.exists():
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.write_text("ready\n")


def log_assigned(assigned: set[TopicPartition]) -> None:
    log.info(
        "partitions assigned", partitions=sorted(f"{t.topic}[{t.partition}]" for t in assigned)
    )


class _ReadyOnAssign(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ready_file: Path) -> None:
        self._ready_file = ready_file

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log_assigned(assigned)
        mark_ready(self._ready_file)


def freeze_startup_heap() -> None:
    """Put what start-up allocated (modules, tables, models, clients) out of the
    collector's reach. Those objects live as long as the process, yet every full
    collection would scan them again: in the executor under load that was a
    50 to 70 ms stop of the event loop a few times a minute, which holds back every
    step in flight at that moment. Called once, when the service is about to run."""
    gc.collect()
    gc.freeze()


def ready_file(settings: Settings, instance: str) -> Path:
    return settings.home / "run" / f"{instance}.ready"


@dataclass
class Clients:
    """A service process's Kafka clients and readiness file (clients not started)."""

    producer: AIOKafkaProducer
    consumer: AIOKafkaConsumer
    ready: Path


async def open_clients(
    settings: Settings,
    *,
    service: str,
    instance: str,
    group: str,
    pools: tuple[str, ...],
    client_id: str | None = None,
) -> Clients:
    """Tracing, /metrics, the topics, a cleared readiness file and the clients:
    what every service process sets up before it subscribes."""
    observability = telemetry.TelemetrySettings()
    telemetry.configure_tracing(service, settings.home, observability)
    metrics.serve(observability.metrics_port, observability.metrics_host)
    blobs.configure(blobs.open_store(settings.blob_url or str(settings.home / "blobs")))
    await ensure_topics(
        settings,
        Topics(settings.topic_prefix).declarations(
            pools,
            tenants=settings.tenant_names,
            dlq_retention_ms=settings.dlq_retention_ms,
            replication_factor=settings.replication_factor,
        ),
    )
    settings = await resolve_idempotence(settings)
    ready = ready_file(settings, instance)
    ready.unlink(missing_ok=True)
    client_id = client_id or f"podium-{instance}"
    return Clients(
        producer=make_producer(settings, client_id=client_id),
        consumer=make_consumer(settings, group_id=group, client_id=client_id),
        ready=ready,
    )


async def run_until_stopped(tasks: list[asyncio.Task[Any]]) -> BaseException | None:
    """Run until SIGTERM/SIGINT or until one of ``tasks`` ends; the first crash, if any."""
    stop = asyncio.Event()
    aio = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        aio.add_signal_handler(sig, stop.set)
    freeze_startup_heap()
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    crashed = [t.exception() for t in done if t is not stopper and t.exception() is not None]
    return crashed[0] if crashed else None


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them to end. A task is cancelled again until it
    has: on Python 3.11 ``asyncio.wait_for`` drops a cancellation that arrives as its
    inner call completes (it returns the result instead; fixed in 3.12, gh-86296), and
    the relay's or the lag watcher's loop then goes round for ever. Memory was seen
    ignoring SIGTERM that way, until the stack killed it 20 s later."""
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await t


# Time a stopping service gives its clients to close (send the outbox, leave the group)
# before it exits regardless: with the broker gone they would otherwise retry for good.
# Nothing is lost by cutting it short: unsent outbox rows go on the next start, and
# uncommitted offsets are redelivered to an inbox that deduplicates them.
CLOSE_GRACE_S = 8.0


async def stop_relay(relay: OutboxRelay, relaying: asyncio.Task[Any]) -> None:
    """Let the relay finish the batch in hand (sent and deleted) before the rest is
    cancelled; one stuck on a broker that does not answer is cancelled after
    ``RELAY_STOP_S``, and its rows go again (a duplicate the inbox absorbs)."""
    relay.stop()
    await asyncio.wait({relaying}, timeout=RELAY_STOP_S)


RELAY_STOP_S = 5.0


async def close_clients(clients: Clients, relay: OutboxRelay) -> None:
    """Send what was committed to the outbox (anything left goes on the next start),
    then stop the clients and withdraw readiness, all within ``CLOSE_GRACE_S``."""

    async def close() -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(relay.publish_pending(), 5)
        await clients.consumer.stop()
        await clients.producer.stop()

    try:
        await asyncio.wait_for(close(), CLOSE_GRACE_S)
    except TimeoutError:
        log.warning("clients did not close in time; exiting anyway", grace_s=CLOSE_GRACE_S)
    finally:
        clients.ready.unlink(missing_ok=True)


def instance_name(spec: ServiceSpec) -> str:
    """One readiness file per process, so replicas never share one: what `podium.stack`
    waits for (``<name>-<pid>``, the executor's ``executor-<pool>-<pid>``)."""
    return f"{spec.instance or spec.name}-{os.getpid()}"


def make_relay(
    settings: Settings, spec: ServiceSpec, producer: Sender, instance: str
) -> OutboxRelay:
    """The service's outbox relay: one that claims the rows it sends, as ``instance``,
    wherever replicas may share the database, else the plain one.

    A PostgreSQL database may be shared by replicas on many machines (docs/deployment.md:
    one database per role), and plain relays there all send every row: two router
    replicas sent 89 to 380 duplicates per 600 step requests. Consumers drop those by
    ``ce_id``, but traffic multiplies and one key's messages can interleave. SQLite is one
    host's file: router, memory and recovery run one replica per home there, so they
    keep the plain relay and its one statement less per batch."""
    if spec.claim_outbox or spec.engine.dialect.name == "postgresql":
        lease_s = spec.outbox_lease_s or settings.outbox_lease_s
        return ClaimingRelay(spec.engine, producer, owner=instance, lease_s=lease_s)
    return OutboxRelay(spec.engine, producer)


def idle_backoff(settings: Settings, consumer: Any) -> IdleBackoff | None:
    """The idle policy of this broker applied to the real consumer (not its gate)."""
    policy = idle_policy(
        settings.broker, settings.fetch_max_wait_ms, settings.idle_fetch_max_wait_ms
    )
    return None if policy is None else IdleBackoff(consumer, policy)


async def run_service(
    settings: Settings, spec: ServiceSpec, *, instance: str | None = None
) -> None:
    """Run until SIGTERM/SIGINT; then stop consuming, settle what is in flight,
    drain the outbox, and exit."""
    instance = instance or instance_name(spec)
    # Replicas of a role share one database; one on a SQLite file of its own refuses.
    guard = SharedStateGuard.of(settings, role=spec.name, group=spec.group, url=spec.engine.url)
    clients = await open_clients(
        settings,
        service=spec.name,
        instance=instance,
        group=spec.group,
        pools=spec.pools,
        client_id=guard.own.client_id(instance),
    )
    relay = make_relay(settings, spec, clients.producer, instance)
    parts: dict[str, Any] = {
        "consumer": guard.gated(clients.consumer),
        "engine": spec.engine,
        "relay": relay,
        "handler": spec.handler,
        "group": spec.group,
        "service": spec.name,
        "carries": Topics(settings.topic_prefix).carries,
        "dead_letters": spec.dead_letters,
        "idle": idle_backoff(settings, clients.consumer),
    }
    loop: ConsumeLoop | ConcurrentConsumeLoop
    listener: ConsumerRebalanceListener
    if spec.concurrency is None:
        loop = ConsumeLoop(**parts)
        listener = _ReadyOnAssign(clients.ready)
    else:
        loop = ConcurrentConsumeLoop(
            **parts, concurrency=spec.concurrency, release_timeout_s=spec.grace_s
        )
        listener = ReleaseOnRevoke(loop, on_assigned=lambda _: mark_ready(clients.ready))
    clients.consumer.subscribe(spec.topics, listener=guard.listening(listener))
    await clients.producer.start()
    await clients.consumer.start()
    relaying = asyncio.create_task(relay.run(), name="relay")
    watched = [
        asyncio.create_task(loop.run(), name="consume"),
        relaying,
        asyncio.create_task(guard.watch(), name="shared-state"),
    ]
    watched += [asyncio.create_task(factory(relay)) for factory in spec.background]
    lag = asyncio.create_task(metrics.watch_lag(clients.consumer, spec.group), name="lag")
    log.info(
        "service started",
        topics=spec.topics,
        group=spec.group,
        event_loop=type(asyncio.get_running_loop()).__module__,
        **spec.details,
    )
    crashed = await run_until_stopped(watched)
    released = None
    if isinstance(loop, ConcurrentConsumeLoop):
        # In-flight messages finish within the grace period or are released uncommitted.
        released = await loop.shutdown(spec.grace_s)
    await stop_relay(relay, relaying)
    await cancel_all([*watched, lag])
    await close_clients(clients, relay)
    await guard.close()
    for close in spec.closers:
        await close()
    spec.engine.dispose()
    telemetry.shutdown()
    log.info(
        "service stopped",
        handled=loop.stats.handled,
        duplicates=loop.stats.duplicates,
        dead_lettered=loop.stats.dead_lettered,
        **({} if released is None else {"released": released}),
    )
    if crashed is not None:
        raise crashed
    guard.raise_if_ended()


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``PODIUM_EVENT_LOOP`` names, as ``asyncio.Runner``'s
    ``loop_factory``: None for asyncio's own, uvloop's ``new_event_loop`` for uvloop."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    raise ValueError(f"no event loop {name!r}: asyncio or uvloop")


def serve(
    service: str,
    build: Callable[[Settings], ServiceSpec],
    *,
    definitions: Mapping[type[Exception], str] | None = None,
) -> None:
    """A service's ``__main__``: settings, logging, ``build(settings)``, then run until
    SIGTERM/SIGINT. A bad setting, or an error of ``definitions`` raised while building
    (exception type -> what it is), is one line on stderr and exit 2."""
    # Databases, spans, blobs, readiness files: private to the user podium runs as.
    secrets.private_umask()
    with refusing(service, definitions):
        settings = read_settings(Settings)
        secrets.register_settings(settings)
        secrets.register(*secrets.otlp_header_values(os.environ))
        configure(service, settings.log_level)
        spec = build(settings)
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(run_service(settings, spec))
    except (UnsharedState, BrokerRefused) as exc:  # restarting will not help: exit 2, one line
        refuse(service, str(exc))
