"""A small Kafka client for submitting tasks and waiting for their outcome,
as any upstream system would: produce TaskSubmitted, read task-events.

A client acts for one tenant (``tenant``, "default" unless told). Task ids are one
namespace across tenants, so an outcome is taken only when its ``tenant`` is the
one the task was submitted under (the client's own for ids it did not submit): a
client never hands back another tenant's outcome for an id it names.

A tenant named in ``PODIUM_TENANTS`` is bound to topics of its own: its client
writes ``<prefix>.tenant.<name>.tasks.v1`` and reads ``<prefix>.tenant.<name>.task-events.v1``,
which, with Kafka ACLs, its principal ``tenant-<name>`` alone may use; the router
takes the tenant from the topic there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from podium_contracts import (
    Contract,
    ContractError,
    Event,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskFailed,
    TaskRejected,
    TaskSubmitted,
    decode,
    encode,
)
from podium_shared import Settings, Topics
from podium_shared.kafka import make_consumer, make_producer

# A task ends in one of these; TaskRejected answers a submission the router refused.
Outcome = TaskCompleted | TaskFailed | TaskCancelled | TaskRejected


class PodiumClient:
    """Submit tasks and collect their outcomes over Kafka."""

    def __init__(self, settings: Settings, tenant: str = "default") -> None:
        self.settings = settings
        self.tenant = tenant
        self.topics = Topics(settings.topic_prefix)
        self.bound = tenant in settings.tenant_names
        # Where this client writes and reads: its tenant's own topics, when it has them.
        self.ingress = self.topics.tenant_tasks(tenant) if self.bound else self.topics.tasks
        self.events = (
            self.topics.tenant_task_events(tenant) if self.bound else self.topics.task_events
        )
        self.producer: AIOKafkaProducer = make_producer(settings, client_id="podium-cli")
        self.consumer: AIOKafkaConsumer = make_consumer(
            settings, group_id=None, client_id="podium-cli"
        )
        self.outcomes: dict[str, Outcome] = {}
        self._tenants: dict[str, str] = {}  # task_id -> the tenant it was submitted under
        self._arrived = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> PodiumClient:
        try:
            await self.producer.start()
            await self.consumer.start()
        except BaseException:
            # Unreachable broker or refused login: close both, or each warns "Unclosed".
            await self.consumer.stop()
            await self.producer.stop()
            raise
        partitions = self.consumer.partitions_for_topic(self.events)
        for _ in range(50):
            if partitions:
                break
            await asyncio.sleep(0.1)
            await self.consumer._client.force_metadata_update()
            partitions = self.consumer.partitions_for_topic(self.events)
        tps = [TopicPartition(self.events, p) for p in sorted(partitions or {0})]
        self.consumer.assign(tps)
        # Only outcomes of what we submit from now on matter.
        await self.consumer.seek_to_end(*tps)
        for tp in tps:
            await self.consumer.position(tp)
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def submit(self, task: TaskSubmitted) -> None:
        """Submit ``task``; its outcome is the one of ``task.tenant`` (of the client's
        tenant when bound: the router answers a claim of another tenant to it)."""
        self._tenants[task.task_id] = self.tenant if self.bound else task.tenant
        await self.publish(task, key=task.task_id)

    async def cancel(self, task_id: str, reason: str = "") -> None:
        """Ask the router to cancel ``task_id`` on behalf of this client's tenant."""
        tenant = self._tenants.get(task_id, self.tenant)
        request = TaskCancelRequested(task_id=task_id, reason=reason, tenant=tenant)
        await self.publish(request, key=task_id)

    async def publish(self, message: Contract, *, key: str, topic: str | None = None) -> None:
        """Send a contract message (to the client's tasks topic unless told otherwise)."""
        value, headers = encode(message, source="podium-cli")
        await self.producer.send_and_wait(
            topic or self.ingress, value=value, key=key.encode(), headers=headers
        )

    async def submit_raw(
        self,
        value: bytes,
        headers: Iterable[tuple[str, bytes]],
        key: bytes | None = None,
        topic: str | None = None,
    ) -> None:
        await self.producer.send_and_wait(
            topic or self.ingress, value=value, key=key, headers=list(headers)
        )

    async def wait_for(
        self, task_ids: Iterable[str], timeout_s: float = 30.0
    ) -> dict[str, Outcome]:
        wanted = set(task_ids)
        deadline = time.monotonic() + timeout_s
        async with self._arrived:
            while not wanted <= self.outcomes.keys():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    missing = sorted(wanted - self.outcomes.keys())
                    raise TimeoutError(f"no outcome within {timeout_s}s for {missing[:5]}")
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    continue
        return {t: self.outcomes[t] for t in wanted}

    async def _read(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            got = False
            for records in batches.values():
                for r in records:
                    event = _try_decode(r.value, r.headers)
                    if event and isinstance(event.payload, Outcome) and self._ours(event.payload):
                        self.outcomes[event.payload.task_id] = event.payload
                        got = True
            if got:
                async with self._arrived:
                    self._arrived.notify_all()

    def _ours(self, outcome: Outcome) -> bool:
        return belongs(outcome, self._tenants.get(outcome.task_id, self.tenant))


def belongs(outcome: Outcome, tenant: str) -> bool:
    """Whether a waiter of ``tenant`` may take ``outcome`` as its task's."""
    if outcome.tenant is None:
        # A rejection of a record whose tenant could not be read names no task that
        # exists (the router answers those only); any other event without a tenant is
        # from a router before tenants were carried: the default tenant's.
        return isinstance(outcome, TaskRejected) or tenant == "default"
    return outcome.tenant == tenant


def _try_decode(value: bytes | None, headers: Any) -> Event | None:
    try:
        return decode(value, [(k, v) for k, v in (headers or ())])
    except ContractError:
        return None
