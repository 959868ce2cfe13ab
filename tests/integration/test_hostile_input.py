"""Hostile records against the real broker and the four real service processes:
each is dead-lettered with its reason, its offset is committed, and the service
that read it goes on (the next task through the same partitions completes)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import ConsumerRecord

from podium.client import PodiumClient
from podium.stack import Stack
from podium_contracts import (
    DLQ_HEADER_PREFIX,
    MAX_JSON_DEPTH,
    StepError,
    StepFailed,
    StepRequested,
    TaskCompleted,
    TaskSubmitted,
    encode,
)
from podium_shared import Topics, dlq_headers
from tests.support.kafka import committed_offsets, read_topic, send_with_raw_header_key
from tests.support.router_db import StatusError, task_status

pytestmark = pytest.mark.integration

NOT_UTF8 = b"\xff\xfe-key"


def tid(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def dead_letters(
    stack: Stack, topic: str, marker: bytes, at_least: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """The records of ``topic``'s DLQ that carry this test's marker header."""
    dlq = Topics.dlq(topic)
    mine: list[ConsumerRecord[bytes, bytes]] = []
    for _ in range(10):  # the relay publishes shortly after the commit
        records = await read_topic(stack.bootstrap, dlq, at_least=at_least)
        mine = [r for r in records if dict(r.headers).get("x-test-marker") == marker]
        if len(mine) >= at_least:
            break
    return mine


async def assert_committed_past(
    stack: Stack, group: str, topic: str, records: list[ConsumerRecord[bytes, bytes]]
) -> None:
    committed = await committed_offsets(stack.bootstrap, group, topic)
    for r in records:
        meta = dlq_headers(list(r.headers))
        assert committed[int(meta["original-partition"])] > int(meta["original-offset"])


async def test_a_header_key_that_is_not_utf8_is_dead_lettered_and_the_services_go_on(
    stack: Stack,
) -> None:
    """Item 3: aiokafka cannot decode such a key; before the fix the router and the
    executor died on it at every start. One on every partition of the router's and
    the executor's topic, so the next task has to pass them."""
    topics = Topics(stack.settings.topic_prefix)
    marker = uuid.uuid4().hex.encode()
    value, headers = encode(TaskSubmitted(task_id=tid("badkey"), workflow="hello"), source="t")
    headers = [*headers, ("x-test-marker", marker)]
    for topic, partitions in ((topics.tasks, 4), (topics.steps("default"), 8)):
        for p in range(partitions):
            await send_with_raw_header_key(
                stack.bootstrap,
                topic,
                partition=p,
                raw_key=NOT_UTF8,
                key=b"badkey",
                value=value,
                headers=headers,
            )
    after = TaskSubmitted(task_id=tid("after-badkey"), workflow="hello", input={"n": 1})
    async with PodiumClient(stack.settings) as client:
        await client.submit(after)
        outcome = (await client.wait_for([after.task_id], 45))[after.task_id]
    assert isinstance(outcome, TaskCompleted), outcome

    for topic, partitions, service, group in (
        (topics.tasks, 4, "router", topics.group("router")),
        (topics.steps("default"), 8, "executor", topics.group("executor", "default")),
    ):
        dlq = await dead_letters(stack, topic, marker, partitions)
        assert len(dlq) == partitions, (topic, len(dlq))
        for r in dlq:
            meta = dlq_headers(list(r.headers))
            assert meta["reason"] == "undecodable" and meta["service"] == service
            assert "header key" in meta["error-message"] and "not UTF-8" in meta["error-message"]
            assert r.value == value and r.key == b"badkey"
            # What can be read goes along untouched; the bad key, as its escaped bytes.
            original = [(k, v) for k, v in r.headers if not k.startswith(DLQ_HEADER_PREFIX)]
            assert original == [*headers, ("\\xff\\xfe-key", b"x")]
        await assert_committed_past(stack, group, topic, dlq)
    assert all(p.proc.poll() is None for p in stack.processes)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"0" + b"]" * depth


@pytest.mark.parametrize("depth", [1000, 200])
async def test_a_task_nested_too_deep_is_dead_lettered_and_the_router_goes_on(
    stack: Stack, depth: int
) -> None:
    """Item 4: 1,000 levels parse (orjson reads 1,024) but killed the router on the
    way into its database, at every start. 200 levels are within every library's
    limits; they are refused by the bound itself, at the edge, before any handler."""
    topics = Topics(stack.settings.topic_prefix)
    marker = uuid.uuid4().hex.encode()
    task_id = tid("deep")
    value = b'{"task_id": "%s", "workflow": "hello", "input": {"deep": %s}}' % (
        task_id.encode(),
        nested(depth),
    )
    _, headers = encode(TaskSubmitted(task_id=task_id, workflow="hello"), source="t")
    headers = [*headers, ("x-test-marker", marker)]
    after = TaskSubmitted(task_id=tid("after-deep"), workflow="hello")
    async with PodiumClient(stack.settings) as client:
        await client.submit_raw(value, headers, key=b"deep")
        await client.submit_raw(*encode(after, source="t"), key=b"deep")  # the same partition
        outcome = (await client.wait_for([after.task_id], 45))[after.task_id]
    assert isinstance(outcome, TaskCompleted), outcome
    (record,) = await dead_letters(stack, topics.tasks, marker, 1)
    meta = dlq_headers(list(record.headers))
    assert meta["reason"] == "undecodable" and meta["service"] == "router"
    assert f"deeper than {MAX_JSON_DEPTH} levels" in meta["error-message"]
    assert record.value == value
    await assert_committed_past(stack, topics.group("router"), topics.tasks, [record])
    with pytest.raises(StatusError):
        task_status(stack.settings, task_id)


async def test_a_contract_on_a_topic_that_does_not_carry_it_is_dead_lettered_as_unexpected(
    stack: Stack,
) -> None:
    """Item 23: a TaskSubmitted on the step results started a task; a StepFailed there,
    or a TaskSubmitted on an executor's or memory's pool, was a processing_error."""
    topics = Topics(stack.settings.topic_prefix)
    marker = uuid.uuid4().hex.encode()
    stray = TaskSubmitted(task_id=tid("stray"), workflow="hello")
    request = StepRequested(
        task_id=tid("stray-failed"),
        step_id="s",
        workflow="hello",
        capability="echo",
        pool="default",
        idempotency_key="k",
    )
    failed = StepFailed.for_step(request, error=StepError(type="x", message="y"), duration_ms=1.0)
    cases = [
        (topics.step_results, stray, "router"),
        (topics.step_results, failed, "router"),
        (topics.steps("default"), stray, "executor"),
        (topics.steps("memory"), stray, "memory"),
    ]
    async with PodiumClient(stack.settings) as client:
        for topic, message, _ in cases:
            value, headers = encode(message, source="t")
            await client.submit_raw(
                value, [*headers, ("x-test-marker", marker)], key=b"stray", topic=topic
            )
        after = TaskSubmitted(task_id=tid("after-stray"), workflow="test-memory", subject="x")
        await client.submit(after)
        outcome = (await client.wait_for([after.task_id], 45))[after.task_id]
    assert isinstance(outcome, TaskCompleted), outcome
    for topic in dict.fromkeys(t for t, _, _ in cases):
        expected = sorted((m.CE_TYPE, s) for t, m, s in cases if t == topic)
        dlq = await dead_letters(stack, topic, marker, len(expected))
        got = []
        for r in dlq:
            meta = dlq_headers(list(r.headers))
            assert meta["reason"] == "unexpected_type", meta
            assert meta["error-type"] == "UnexpectedContract"
            assert "is not carried by this topic" in meta["error-message"]
            got.append((dict(r.headers)["ce_type"].decode(), meta["service"]))
        assert sorted(got) == expected, topic
    with pytest.raises(StatusError):  # the stray TaskSubmitted started nothing
        task_status(stack.settings, stray.task_id)
