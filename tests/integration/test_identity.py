"""What makes a message the same message, and where it must go, over the real
broker and the four real service processes: event identity is source + id, a
keyless task is dead-lettered, and a cancel is not memory's dead letter."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import (
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskSubmitted,
    encode,
)
from podium_shared import Topics, dlq_headers
from tests.support.kafka import committed_offsets, read_topic
from tests.support.router_db import StatusError, task_status
from tests.support.waiting import outbox_empty, wait_until

pytestmark = pytest.mark.integration


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def duplicates_counted(stack: Stack, topic: str) -> float:
    """The router's podium_messages_duplicate_total for a topic, from its /metrics."""
    router = next(p for p in stack.processes if p.name == "router")
    assert router.metrics_url is not None
    text = httpx.get(router.metrics_url, timeout=5).text
    label = f'podium_messages_duplicate_total{{service="router",topic="{topic}"}}'
    lines = [line for line in text.splitlines() if line.startswith(label)]
    return float(lines[0].split()[-1]) if lines else 0.0


async def test_two_systems_that_number_their_events_alike_both_get_their_task_run(
    stack: Stack,
) -> None:
    # Billing and CRM both call their first event "1" (here a shared random id): two tasks.
    ce_id = uuid.uuid4().hex
    billing = TaskSubmitted(task_id=tid("billing"), workflow="hello", input={"from": "billing"})
    crm = TaskSubmitted(task_id=tid("crm"), workflow="hello", input={"from": "crm"})
    topics = Topics(stack.settings.topic_prefix)
    before = duplicates_counted(stack, topics.tasks)
    async with PodiumClient(stack.settings) as client:
        billing_record = encode(billing, source="urn:billing", id=ce_id)
        await client.submit_raw(*billing_record, key=billing.task_id.encode())
        await client.submit_raw(*encode(crm, source="urn:crm", id=ce_id), key=crm.task_id.encode())
        outcomes = await client.wait_for([billing.task_id, crm.task_id], 30)
        # The very same billing record again (a producer retry): a duplicate, counted.
        await client.submit_raw(*billing_record, key=billing.task_id.encode())
        after = TaskSubmitted(task_id=billing.task_id + "-after", workflow="hello")
        await client.submit_raw(*encode(after, source="urn:billing"), key=billing.task_id.encode())
        await client.wait_for([after.task_id], 30)  # same partition: the retry was read
    assert isinstance(outcomes[billing.task_id], TaskCompleted)
    assert isinstance(outcomes[crm.task_id], TaskCompleted)
    assert outcomes[crm.task_id].output == {"from": "crm"}
    assert duplicates_counted(stack, topics.tasks) == before + 1
    router_log = (stack.log_dir / "router.log").read_text()
    assert "duplicate skipped" in router_log and ce_id in router_log


async def test_a_structured_event_whose_id_is_not_a_string_is_dead_lettered(
    stack: Stack,
) -> None:
    topics = Topics(stack.settings.topic_prefix)
    marker = uuid.uuid4().hex.encode()
    task = TaskSubmitted(task_id=tid("objid"), workflow="hello")
    body = {
        "specversion": "1.0",
        "id": {"a": [1]},
        "type": TaskSubmitted.CE_TYPE,
        "source": "urn:upstream",
        "data": task.model_dump(mode="json"),
    }
    value = orjson.dumps(body)
    headers = [("content-type", b"application/cloudevents+json"), ("x-test-marker", marker)]
    async with PodiumClient(stack.settings) as client:
        await client.submit_raw(value, headers, key=task.task_id.encode())
    dlq = await read_topic(stack.bootstrap, topics.dlq(topics.tasks), at_least=1)
    deadline = time.monotonic() + 20
    while not any(dict(r.headers).get("x-test-marker") == marker for r in dlq):
        assert time.monotonic() < deadline, "the event never reached the DLQ"
        await asyncio.sleep(0.2)
        dlq = await read_topic(stack.bootstrap, topics.dlq(topics.tasks), at_least=len(dlq) + 1)
    record = next(r for r in dlq if dict(r.headers).get("x-test-marker") == marker)
    meta = dlq_headers(list(record.headers))
    assert meta["reason"] == "undecodable" and "id must be JSON strings" in meta["error-message"]
    assert record.value == value
    with pytest.raises(StatusError):
        task_status(stack.settings, task.task_id)


async def test_a_task_without_a_kafka_key_is_dead_lettered_with_the_reason(
    stack: Stack,
) -> None:
    topics = Topics(stack.settings.topic_prefix)
    task = TaskSubmitted(task_id=tid("keyless"), workflow="hello")
    value, headers = encode(task, source="urn:upstream")
    async with PodiumClient(stack.settings) as client:
        await client.submit_raw(value, headers, key=None)
        ce_id = dict(headers)["ce_id"]
        dlq = await read_topic(stack.bootstrap, topics.dlq(topics.tasks), at_least=1)
        deadline = time.monotonic() + 20
        while not any(dict(r.headers).get("ce_id") == ce_id for r in dlq):
            assert time.monotonic() < deadline, "the keyless task never reached the DLQ"
            await asyncio.sleep(0.2)
            dlq = await read_topic(stack.bootstrap, topics.dlq(topics.tasks), at_least=len(dlq) + 1)
    record = next(r for r in dlq if dict(r.headers).get("ce_id") == ce_id)
    meta = dlq_headers(list(record.headers))
    assert meta["reason"] == "invalid" and "no Kafka key" in meta["error-message"]
    assert meta["service"] == "router" and record.key is None and record.value == value
    with pytest.raises(StatusError):
        task_status(stack.settings, task.task_id)  # never accepted


async def test_every_dlq_topic_is_declared_at_start_up(stack: Stack) -> None:
    topics = Topics(stack.settings.topic_prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    # Declared at start-up, before anything was dead-lettered: a broker that does not
    # create topics on first use (compose) can take the dead letter.
    assert topics.dlq(topics.task_events) in existing
    assert {t.name for t in topics.declarations()} <= existing
    # and those of pools only a workflow names, which no executor of this stack serves
    # (recovery-fallback's "backup"): the router declares them for its steps and for
    # recovery's dead letters of them.
    assert {topics.steps("backup"), topics.dlq(topics.steps("backup"))} <= existing


async def test_a_cancelled_task_is_not_dead_lettered_by_memory(stack: Stack) -> None:
    topics = Topics(stack.settings.topic_prefix)
    task = TaskSubmitted(task_id=tid("cancel"), workflow="test-slow", input={"seconds": 3})
    async with PodiumClient(stack.settings) as client:
        await client.submit(task)
        deadline = time.monotonic() + 10
        while True:
            try:
                if task_status(stack.settings, task.task_id)["steps"]:
                    break
            except StatusError:
                pass
            assert time.monotonic() < deadline, "the task never started"
            await asyncio.sleep(0.05)
        await client.publish(
            TaskCancelRequested(task_id=task.task_id, reason="not needed"), key=task.task_id
        )
        outcome = (await client.wait_for([task.task_id], 20))[task.task_id]
    assert isinstance(outcome, TaskCancelled)
    # Wait until memory has read past the TaskCancelled, then look in the DLQ.
    events = await read_topic(stack.bootstrap, topics.task_events, at_least=1)
    cancelled = next(
        r
        for r in events
        if r.key == task.task_id.encode()
        and dict(r.headers)["ce_type"] == TaskCancelled.CE_TYPE.encode()
    )
    group = topics.group("memory")
    deadline = time.monotonic() + 20
    while (await committed_offsets(stack.bootstrap, group, topics.task_events)).get(
        cancelled.partition, -1
    ) <= cancelled.offset:
        assert time.monotonic() < deadline, "memory never read the TaskCancelled"
        await asyncio.sleep(0.2)
    # Whatever that transaction wrote (a dead letter, if it were wrong) is published
    # once memory's outbox is empty.
    await wait_until(
        outbox_empty(stack.settings.database_url("memory")), 20, "memory's outbox emptying"
    )
    dead = await read_topic(
        stack.bootstrap, topics.dlq(topics.task_events), at_least=1, timeout_s=3
    )
    assert [r for r in dead if r.key == task.task_id.encode()] == []
